"""A session's handle on the engine, and the one copy of its conversation.

The handle owns the session's `Conversation` behind a lock. Edits (add, delete, truncate) are applied at
once by the caller's thread, so a bad id is an immediate KeyError/ValueError; the engine thread reads
what is pending, inserts encoded clips, appends generated items and marks positions held, under the same
lock. What the engine has to do about an edit (encode a clip, start a response) goes to it as a command;
results come back as events through the session's sink, on the engine thread.

Each item may carry the caller's own data (`Item.view`, never read by the model or the engine): a client
sees the items that have one, in the conversation's order.

A speculative start (streaming/speculation.py) puts a user item and an open assistant item without views into the
conversation; `confirm` gives them their views, `drop` (or any other edit or request, first) takes them out
again, without marking the row stale: the engine puts the row back to where it was.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from models.conversation import Conversation, Item, Segment
from models.defaults import frames_in_ms
from models.generation import Modality
from models.tokenizer import TextTokenizer
from streaming.messages import (
    Cancel,
    Close,
    Command,
    Confirm,
    Drop,
    ItemCreated,
    Respond,
    ResponseRequest,
    Speculate,
    Transcribe,
)

__all__ = ["EngineSession"]


class Engine(Protocol):
    """What a handle needs of streaming.engine.Engine (which imports this module)."""

    tokenizer: TextTokenizer

    def submit(self, command: Command) -> None: ...

    def withdraw(self, session: int, command: Command) -> None: ...


class EngineSession:
    def __init__(self, engine: Engine, session: int) -> None:
        self._engine = engine
        self.id = session
        self.closed = False
        self.conversation = Conversation(engine.tokenizer)
        self.lock = threading.Lock()  # guards `conversation` (the caller's edits, the engine's reads)
        self._speculation: tuple[Item, Item, str] | None = None  # (user, assistant, response id)

    # ---- edits (applied now)
    def add_item(self, item_id: str, role: str, *, text: str | None = None, audio: np.ndarray | None = None,
                 after: str | None = None, first: bool = False, view: object = None, hidden: bool = False) -> None:
        """A system, user or assistant item: text, and/or a user clip (16 kHz float32, encoded by the engine
        in turn); appended, or placed after the item `after`, or first; `hidden`: a view only, not laid out.
        ValueError: the id exists; KeyError: no item `after`."""
        self.drop()
        item = Item(item_id, role, view=view, hidden=hidden)
        if text is not None:
            item.segments.append(Segment(Modality.TEXT, self._engine.tokenizer.encode(text)))
        with self.lock:
            self.conversation.add(item, after=after, first=first)
        self._engine.submit(ItemCreated(self.id, item, audio))

    def delete_item(self, item_id: str) -> None:
        self.drop()
        with self.lock:
            self.conversation.delete(item_id)

    def truncate_item(self, item_id: str, audio_end_ms: int) -> str:
        """Keep what the user heard of an assistant item; returns the text kept (the transcript heard)."""
        self.drop()
        with self.lock:
            return self.conversation.truncate_audio(item_id, frames_in_ms(audio_end_ms))

    # ---- reading
    def view(self, item_id: str) -> object | None:
        """The caller's data on an item; None if the item has none or is not in the conversation."""
        with self.lock:
            return next((it.view for it in self.conversation.items if it.id == item_id), None)

    def previous_view_id(self, item_id: str | None = None) -> str | None:
        """The id of the last item with a view before `item_id` (None: before the end)."""
        with self.lock:
            items = self.conversation.items
            end = next((i for i, it in enumerate(items) if it.id == item_id), len(items))
            return next((it.id for it in reversed(items[:end]) if it.view is not None), None)

    # ---- work for the engine
    def respond(self, request: ResponseRequest, view: object = None) -> None:
        """Generate into a new assistant item (`request.item_id`), appended now; runs after any response
        still in progress. ValueError: the id exists."""
        self.drop()
        item = Item(request.item_id, "assistant", closed=False, view=view)
        with self.lock:
            self.conversation.add(item)
        self._engine.submit(Respond(self.id, request, item))

    # ---- speculative start
    @property
    def speculation(self) -> str | None:
        """The response id of the speculation in progress, if any."""
        return self._speculation[2] if self._speculation is not None else None

    def speculate(self, request: ResponseRequest, user_item_id: str, audio: np.ndarray) -> None:
        """Prepare `request` as the answer to a user item `user_item_id` holding `audio` (16 kHz float32), both
        appended now without views, before the turn is committed. ValueError: an id exists."""
        self.drop()
        user = Item(user_item_id, "user")
        assistant = Item(request.item_id, "assistant", closed=False)
        with self.lock:
            self.conversation.add(user)
            try:
                self.conversation.add(assistant)
            except ValueError:
                self.conversation.items.remove(user)
                raise
        self._speculation = (user, assistant, request.response_id)
        self._engine.submit(Speculate(self.id, request, user_item_id, audio))

    def confirm(self, user_view: object, assistant_view: object = None) -> None:
        """The turn was committed as speculated: the items get their views, and the engine lets the response out."""
        user, assistant, response_id = self._speculation
        self._speculation = None
        with self.lock:
            user.view, assistant.view = user_view, assistant_view
        self._engine.submit(Confirm(self.id, response_id))

    def drop(self) -> None:
        """Undo the speculation in progress, if any: its items leave the conversation now (not stale: the engine
        puts the row back)."""
        if self._speculation is None:
            return
        user, assistant, response_id = self._speculation
        self._speculation = None
        with self.lock:
            items = self.conversation.items
            items[:] = [it for it in items if it is not user and it is not assistant]
        self._engine.submit(Drop(self.id, response_id))

    def transcribe(self, item_id: str, response_id: str) -> None:
        """ASR of a user item's audio, as a separate response (on a spare slot, if one is free)."""
        self._engine.submit(Transcribe(self.id, item_id, response_id))

    def cancel(self, reason: str = "client_cancelled") -> None:
        self._engine.submit(Cancel(self.id, reason))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._engine.withdraw(self.id, Close(self.id))
