"""The engine thread's record of each slot: commands applied to it, the runner's plan made from the
scheduler's decisions, and responses updated from the runner's result. Events are collected here; the
engine fans them out once per iteration. Speculative starts (streaming/speculation.py) are begun, confirmed
and undone here too.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from models.config import AudioModelConfig
from models.conversation import Conversation, Item, Segment
from models.defaults import ASR_PROMPT, TRANSCRIPTION_TOKENS
from models.generation import Modality
from models.tokenizer import TextTokenizer
from streaming.messages import (
    Cancel,
    Close,
    Command,
    Confirm,
    Drop,
    EngineStats,
    Event,
    ItemAdded,
    ItemCreated,
    Mode,
    Open,
    Respond,
    ResponseDone,
    ResponseRequest,
    SessionFailed,
    Speculate,
    Status,
    Timings,
    Transcribe,
    Usage,
)
from streaming.response import Response
from streaming.runner import Prefill, StepPlan, StepResult
from streaming.scheduler import Scheduler, SlotView
from streaming.speculation import Speculation

__all__ = ["Slot", "Slots"]

log = logging.getLogger(__name__)


@dataclass
class Slot:
    index: int
    session: int  # helpers (transcriptions) have negative ids
    sink: Callable[[Event], None]
    conv: Conversation
    lock: threading.Lock  # the conversation's (the session's handle edits it too)
    ephemeral: bool = False  # closes itself after its response (transcriptions)
    response: Response | None = None
    queued: deque[tuple[ResponseRequest, Item]] = field(default_factory=deque)  # requested while one runs
    clips: deque[tuple[Item, np.ndarray]] = field(default_factory=deque)  # user clips still to encode
    transcriptions: list[Transcribe] = field(default_factory=list)  # waiting for their clip
    waiting_since: float = 0.0
    skipped_last: bool = False
    spec: Speculation | None = None  # a turn prepared before its commit

    @property
    def speculating(self) -> bool:
        """Working on a turn that is not committed yet."""
        return self.spec is not None and self.spec.live


class Slots:
    def __init__(self, cfg: AudioModelConfig, tokenizer: TextTokenizer, scheduler: Scheduler, max_context: int,
                 stats: EngineStats, stats_lock: threading.Lock | None = None) -> None:
        self.cfg, self.tokenizer, self.scheduler, self.stats = cfg, tokenizer, scheduler, stats
        self._stats_lock = stats_lock or threading.Lock()  # the engine's, for the sample lists
        self.max_context = max_context
        self._table: dict[int, Slot] = {}  # slot index -> its record (the scheduler says who owns which)
        self._events: list[tuple[Slot, Event]] = []
        self._resets: list[int] = []  # rows to clear at the next step
        self._restores: list[int] = []  # rows whose speculative work is undone at the next step
        self._forgets: list[int] = []  # rows whose speculation was confirmed: their snapshots go
        self._starts: list = []  # responses whose runner state starts at the next step
        self._encoding: tuple[Slot, Item] | None = None  # the clip in this step
        self._clip_last = False  # the last iteration was a clip's
        self._finishing: list[Slot] = []  # responses whose end is in this step
        self._helpers = itertools.count(1)
        self.last_step_s = 0.0

    def busy(self) -> bool:
        """Work to do (a speculation that waits for its commit is not: the engine may sleep until a command)."""
        return bool(self._restores) or any(s.clips or s.queued or s.transcriptions or (
            s.response and not (s.speculating and s.spec.parked and not s.response.finishing))
            for s in self._table.values())

    def take_events(self) -> list[tuple[Slot, Event]]:
        events, self._events = self._events, []
        return events

    def _emit(self, slot: Slot, *events: Event) -> None:
        if slot.speculating:  # nothing reaches the session before the commit
            slot.spec.held.extend(e for e in events if not isinstance(e, SessionFailed))
            events = tuple(e for e in events if isinstance(e, SessionFailed))
        self._events.extend((slot, e) for e in events)

    # ---- commands
    def apply(self, cmd: Command) -> None:
        if isinstance(cmd, Open):
            return self._open(cmd)
        slot = next((s for s in self._table.values() if s.session == cmd.session), None)
        if slot is None:
            return None  # closed or failed already
        try:
            match cmd:
                case ItemCreated(item=item, audio=audio):
                    if audio is not None:
                        slot.clips.append((item, audio))  # encoded in turn, one clip every other iteration
                    else:
                        self._emit(slot, ItemAdded(item.id, sum(len(s) for s in item.segments)))
                case Respond(request=request, item=item):
                    if slot.response is not None:
                        slot.queued.append((request, item))
                    else:
                        self._start(slot, request, item)
                case Transcribe():
                    self._transcribe(slot, cmd)
                case Cancel(reason=reason):
                    self._cancel(slot, reason)
                case Close():
                    self._release(slot)
                case Speculate():
                    self._speculate(slot, cmd)
                case Confirm(response_id=rid):
                    self._confirm(slot, rid)
                case Drop(response_id=rid):
                    if slot.spec is not None and slot.spec.response_id == rid:
                        self._undo(slot)
        except Exception as e:  # a bad request fails only its session
            log.exception("session %d: %s failed", slot.session, type(cmd).__name__)
            self.fail(slot, f"{type(cmd).__name__} failed: {e}")
        return None

    def _open(self, cmd: Open) -> None:
        index = self.scheduler.place(cmd.session)
        slot = Slot(-1 if index is None else index, cmd.session, cmd.sink, cmd.handle.conversation, cmd.handle.lock)
        if index is None:  # admission prevents this
            log.error("no free slot for session %d", cmd.session)
            return self._emit(slot, SessionFailed("no free slot"))
        self._table[index] = slot
        self._resets.append(index)
        return None

    def _start(self, slot: Slot, request: ResponseRequest, item: Item) -> None:
        now = time.perf_counter()
        r = slot.response = Response(request, item, self.cfg, self.tokenizer, now)
        slot.waiting_since = now
        self._starts.append(r.start(slot.index))
        # Drop the oldest turns (never the system prompt or a response's item) until the history plus some
        # room to answer fits; the state is then rebuilt from the kept history.
        room = self._room(request)
        keep = (item.id, *(i.id for _, i in slot.queued))
        with slot.lock:
            while slot.conv.length() + room > self.max_context and slot.conv.drop_oldest(keep) is not None:
                pass

    def _room(self, request: ResponseRequest) -> int:
        return min(request.max_tokens, self.max_context // 4)

    # ---- speculative starts (streaming/speculation.py)
    def _speculate(self, slot: Slot, cmd: Speculate) -> None:
        with slot.lock:
            items = {it.id: it for it in slot.conv.items}
            fits = slot.conv.length() + self._room(cmd.request) <= self.max_context
        user, assistant = items.get(cmd.user_item_id), items.get(cmd.request.item_id)
        if user is None or assistant is None:
            return  # dropped before the engine got to it
        if slot.spec is not None:
            self._undo(slot)
        # It runs ahead only on an idle slot and a history that needs no trimming (that could not be undone).
        live = fits and not (slot.response or slot.queued or slot.clips or slot.transcriptions)
        slot.spec = spec = Speculation(cmd.request, user, assistant, cmd.audio, live, time.perf_counter())
        if live:
            self.stats.speculative_starts += 1
            slot.clips.append((user, cmd.audio))
            self._start(slot, cmd.request, assistant)
            spec.response, spec.start = slot.response, self._starts[-1]

    def _confirm(self, slot: Slot, response_id: str) -> None:
        spec = slot.spec
        if spec is None or spec.response_id != response_id:
            return
        slot.spec = None
        if not spec.live:  # it never ran ahead: the turn runs now, as any other
            slot.clips.append((spec.user, spec.audio))
            if slot.response is not None:
                slot.queued.append((spec.request, spec.assistant))
            else:
                self._start(slot, spec.request, spec.assistant)
            return
        now = time.perf_counter()
        self.stats.speculative_hits += 1
        with self._stats_lock:
            self.stats.speculative_saved_seconds.append(spec.saved_s(now))
            del self.stats.speculative_saved_seconds[:-10_000]
        r = spec.response
        if r.timings.first_audio is not None:  # the client's playback starts now
            r.timings.first_audio = now
        self._forgets.append(slot.index)
        self._events.extend((slot, e) for e in spec.held)

    def _undo(self, slot: Slot) -> None:
        """Drop a speculation: the slot exactly as before it."""
        spec, slot.spec = slot.spec, None
        if not spec.live:
            return  # nothing ran; its items were never laid out in the row
        self.stats.speculative_drops += 1
        if slot.response is spec.response:
            slot.response = None
        slot.clips = deque(c for c in slot.clips if c[0] is not spec.user)
        self._starts = [s for s in self._starts if s is not spec.start]
        with slot.lock:
            slot.conv.items[:] = [it for it in slot.conv.items if it is not spec.user and it is not spec.assistant]
            if spec.position is not None:
                slot.conv.position = spec.position
                slot.conv.stale = slot.conv.stale or spec.stale
        self._restores.append(slot.index)

    def _withdrawn(self, slot: Slot) -> bool:
        """The session took its speculation back (its items left the conversation) before the engine's Drop."""
        with slot.lock:
            return not any(it is slot.spec.user for it in slot.conv.items)

    def _cancel(self, slot: Slot, reason: str) -> None:
        while slot.queued:
            request, item = slot.queued.popleft()
            with slot.lock:
                if item in slot.conv.items:
                    slot.conv.delete(item.id)
            self._emit(slot, ResponseDone(request.response_id, item.id, Status.CANCELLED, reason, Usage(), Timings(),
                                          ""))
        if slot.response is not None:
            slot.response.cancel(reason)

    def _transcribe(self, slot: Slot, cmd: Transcribe) -> None:
        def refuse(why: str) -> None:
            self._emit(slot, ResponseDone(cmd.response_id, cmd.item_id, Status.FAILED, why, Usage(), Timings(), ""))

        waiting = [c for c in slot.clips if c[0].id == cmd.item_id]
        if waiting:
            for clip in waiting:  # needed now: encode it ahead of its turn
                slot.clips.remove(clip)
                slot.clips.appendleft(clip)
            slot.transcriptions.append(cmd)
            return None
        with slot.lock:
            source = next((it for it in slot.conv.items if it.id == cmd.item_id), None)
        if source is None:
            return refuse(f"no item {cmd.item_id}")
        clip = next((s for s in source.segments if s.kind == Modality.AUDIO_IN), None)
        if clip is None:
            return refuse(f"item {cmd.item_id} has no audio")
        helper = -next(self._helpers)
        index = self.scheduler.place(helper)
        if index is None:
            return refuse("no free slot for transcription")
        conv = Conversation(self.tokenizer)
        conv.add(Item("system", "system", [Segment(Modality.TEXT, self.tokenizer.encode(ASR_PROMPT))]))
        conv.add(Item(cmd.item_id, "user", [clip]))
        item = Item(f"{cmd.item_id}/transcript", "assistant", closed=False)
        conv.add(item)
        self._table[index] = h = Slot(index, helper, slot.sink, conv, threading.Lock(), ephemeral=True)
        self._resets.append(index)
        self._start(h, ResponseRequest(cmd.response_id, cmd.item_id, Mode.ASR, max_tokens=TRANSCRIPTION_TOKENS,
                                       audio=False, audio_temperature=0.0), item)
        return None

    # ---- failures and release
    def fail(self, slot: Slot, message: str) -> None:
        if self._table.get(slot.index) is not slot:
            return
        self.stats.sessions_failed += 1
        self._release(slot)
        self._emit(slot, SessionFailed(message))

    def fail_all(self, message: str) -> None:
        for slot in list(self._table.values()):
            self._emit(slot, SessionFailed(message))

    def _release(self, slot: Slot) -> None:
        if self._table.get(slot.index) is slot:
            del self._table[slot.index]
            self.scheduler.release(slot.index)

    # ---- one iteration: the plan
    def schedule(self) -> StepPlan:
        for slot in self._table.values():
            if slot.speculating and self._withdrawn(slot):
                self._undo(slot)
        plan = StepPlan(reset=self._resets, start=self._starts, restore=self._restores, forget=self._forgets)
        self._resets, self._starts, self._restores, self._forgets = [], [], [], []
        for slot in self._table.values():
            r = slot.response
            if r is not None and r.cancel_reason and not r.finishing:
                r.gen.cancel()
                r.finishing = True
            if r is not None and r.finishing:
                self._finishing.append(slot)
                if r.needs_flush:
                    plan.flush.append(slot.index)
        if plan.flush:
            return plan  # a step of its own (it is short): the responses' ends reach their clients first
        now = time.perf_counter()
        ready = [s for s in self._table.values() if s.response is not None and not s.response.finishing and not s.clips]
        views = [self._view(s, now) for s in ready if not s.speculating]
        ahead = [s for s in self._table.values() if s.speculating and not s.spec.parked]
        allowed = bool(ahead) and self.scheduler.may_speculate(views, self.last_step_s, extra_rows=len(ahead))
        # A clip gets an iteration of its own (about a decode step's cost), every other iteration at most,
        # so that its session can prefill right after it and the others' decode steps keep coming.
        if not self._clip_last:
            for slot in sorted(self._table.values(), key=lambda s: (s.speculating, not s.transcriptions)):
                if slot.clips and (allowed or not slot.speculating):
                    item, audio = slot.clips.popleft()
                    self._encoding, self._clip_last = (slot, item), True
                    plan.encode.append((slot.index, audio))
                    if slot.speculating:
                        slot.spec.worked(now)
                    return plan
        self._clip_last = False
        if allowed:
            views += [self._view(s, now) for s in ahead if s in ready]
        decided = self.scheduler.schedule(views, self.last_step_s)
        self.stats.queue_depth = sum(1 for v in views if v.pending_positions > 0)
        self.stats.skipped_rows += len(decided.skipped)
        for index in decided.skipped:
            self._table[index].skipped_last = True
        decode = list(decided.decode)
        for index, n in decided.prefill:
            if self._prefill(plan, self._table[index], n):
                decode.append(index)  # its prefill ends now: it decodes in the same step
        for index in decode:
            slot = self._table[index]
            plan.decode.append(slot.response.decode(index, slot.conv.position))
            if slot.speculating:
                slot.spec.worked(now)
        return plan

    def _view(self, slot: Slot, now: float) -> SlotView:
        r = slot.response
        with slot.lock:
            pending = 0 if r.prefilled else max(1, slot.conv.pending_length())
        return SlotView(slot.index, slot.waiting_since, pending, r.prefilled, r.lead_s(now), slot.skipped_last,
                        awaiting_audio=r.awaiting_audio, speculative=slot.speculating)

    def _prefill(self, plan: StepPlan, slot: Slot, n: int) -> bool:
        """The next chunk of a slot's prefill (n positions); True if it is the last."""
        r, conv = slot.response, slot.conv
        spec = slot.spec if slot.speculating else None
        with slot.lock:
            if spec is not None and not any(it is spec.user for it in conv.items):
                return False  # withdrawn by the session just now: undone at the next iteration
            if spec is not None and spec.position is None:  # its first prefill: what the row goes back to
                spec.position, spec.stale = conv.position, conv.stale
                plan.snapshot.append(slot.index)
            if spec is not None:
                spec.worked(time.perf_counter())
            reset = conv.stale
            if reset:
                conv.reset()
            total = conv.pending_length()
            segments = conv.pending(n)
        if conv.position + total > self.max_context:
            self.fail(slot, f"prefill failed: the conversation does not fit the context of {self.max_context}")
            return False
        if r.usage.input_positions == 0 and r.usage.cached_positions == 0:
            r.usage.cached_positions = conv.position
        plan.prefill.append(Prefill(slot.index, conv.position, segments, reset, last=n >= total))
        return n >= total

    # ---- one iteration: the result
    def update(self, plan: StepPlan, result: StepResult) -> None:
        now = time.perf_counter()
        for index, message in result.failed.items():
            if index in self._table:
                self.fail(self._table[index], message)
        alive = {i: s for i, s in self._table.items() if i not in result.failed}
        for index, segment in result.encoded.items():
            self._encoded(alive.get(index), segment)
        finishing, self._finishing = self._finishing, []
        for slot in finishing:
            if alive.get(slot.index) is slot:
                self._finish(slot, result.tails.get(slot.index), now)
        for p in plan.prefill:
            slot = alive.get(p.slot)
            if slot is None:
                continue
            n = sum(len(s) for s in p.segments)
            with slot.lock:
                slot.conv.held(n)
            slot.response.usage.input_positions += n
            self.stats.prefill_positions += n
            if p.last:
                slot.response.prefill_done(now)
        if result.decode_seconds is not None:
            self.last_step_s = result.decode_seconds
        for d in plan.decode:
            slot = alive.get(d.slot)
            if slot is None or d.slot not in result.items:
                continue
            r = slot.response
            slot.skipped_last = False
            with slot.lock:
                if d.feed is not None:
                    slot.conv.held(1)
                events = r.accept(d.want, result.items[d.slot], now,
                                  context_full=slot.conv.position + 1 >= self.max_context)
            self._emit(slot, *events)
            if d.slot in result.pcm:
                self._emit(slot, r.audio(result.pcm[d.slot], now))
            if r.done:
                if r.needs_flush:
                    r.finishing = True  # its speech stream's tail comes at the next step
                else:
                    self._finish(slot, None, now)

    def _encoded(self, slot: Slot | None, segment: Segment) -> None:
        encoding, self._encoding = self._encoding, None
        if slot is None or encoding is None or encoding[0] is not slot:
            return
        item = encoding[1]
        with slot.lock:
            slot.conv.prepend(item, segment)
        self._emit(slot, ItemAdded(item.id, sum(len(s) for s in item.segments)))
        waiting = [t for t in slot.transcriptions if t.item_id == item.id]
        for t in waiting:
            slot.transcriptions.remove(t)
            self._transcribe(slot, t)

    def _finish(self, slot: Slot, tail: np.ndarray | None, now: float) -> None:
        r = slot.response
        with slot.lock:
            events = r.finish(tail, now)
        slot.response = None
        self._emit(slot, *events)
        if slot.ephemeral:
            self._release(slot)
        elif slot.queued:
            self._start(slot, *slot.queued.popleft())
