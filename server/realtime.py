"""The OpenAI Realtime (GA) wire format, for both transports: client JSON events -> Session calls, and
Session events -> server JSON events (each parses as `openai.types.realtime.RealtimeServerEvent`).

One `RealtimeAdapter` per connection. The transport gives it `send(event: dict)` and where the speech goes
(server.audio_out: delta events on a WebSocket, the media track on WebRTC); the adapter treats every transport
alike.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import typing
from collections.abc import Callable

import numpy as np
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from pydantic import BaseModel, ValidationError

from server import validation
from server.audio_out import AudioOutFactory
from server.errors import error_body
from server.realtime_json import item_json, part_json, response_json
from server.session_config import ProtocolError, apply_session_update, max_tokens, session_object, session_update
from streaming import session as s
from streaming.audio import AudioFormat, InputDecoder
from streaming.tools import ToolError, parse_tools

__all__ = ["CLOSE", "ErrorSent", "ProtocolError", "RealtimeAdapter", "apply_session_update", "session_object"]

log = logging.getLogger(__name__)

_UNION = typing.get_args(RealtimeClientEvent)[0]  # Annotated[Union[...], discriminator]
_CLIENT_EVENTS: dict[str, type[BaseModel]] = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in typing.get_args(_UNION)
}


class ErrorSent(typing.NamedTuple):
    """An error event that went to the client, for the log and the metrics."""

    code: str
    param: str | None
    message: str
    client_event_type: str | None  # the event it answers, when it answers one
    client_event_id: str | None


CLOSE = {"type": "_close"}  # not sent: tells the transport to close after what is queued before it


def event_id() -> str:
    return f"event_{secrets.token_hex(10)}"


# ---- the adapter
class RealtimeAdapter:
    def __init__(self, send: Callable[[dict], None], audio_out: AudioOutFactory, *, model: str,
                 max_event_bytes: int, on_response: Callable | None = None,
                 on_error: Callable[[ErrorSent], None] | None = None) -> None:
        self.send_event = send
        self.audio_out = audio_out(self.emit)
        self.model = model
        self.max_event_bytes = max_event_bytes
        self.on_response = on_response  # metrics hook: called with each finished Response
        self.on_error = on_error  # log and metrics hook: called with each error event sent
        self._handling: str | None = None  # the type of the client event being handled
        self.session: s.Session | None = None
        self.session_id = f"sess_{secrets.token_hex(10)}"

    def start(self, session: s.Session) -> None:
        self.session = session
        self.emit("session.created", session=self._session())

    def instructions_fit(self, text: str) -> validation.Problem | None:
        engine = self.session.engine
        return validation.instructions_problem(text, engine.tokenizer, engine.config.max_context)

    def _session(self) -> dict:
        return session_object(self.session.config, self.session_id, self.model, self.session.speculative)

    def emit(self, type_: str, **fields: object) -> None:
        self.send_event({"type": type_, "event_id": event_id(), **fields})

    @property
    def conversation_id(self) -> str:
        return "conv_" + self.session_id.removeprefix("sess_")

    def error(self, code: str, message: str, param: str | None = None, client_event_id: str | None = None,
              type_: str = "invalid_request_error") -> None:
        self.emit("error", error=error_body(code, message, type_=type_, param=param, event_id=client_event_id))
        if self.on_error is not None:
            self.on_error(ErrorSent(code, param, message, self._handling, client_event_id))

    # ---- client -> server
    def handle_text(self, raw: str | bytes) -> None:
        if (size := validation.byte_size(raw, self.max_event_bytes)) > self.max_event_bytes:
            return self.error("event_too_large", f"events are limited to {self.max_event_bytes} bytes, this one "
                              f"has {size}", None, validation.raw_event_id(raw))
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            return self.error("invalid_json", f"the event is not valid JSON: {e}", None, validation.raw_event_id(raw))
        client_id = data.get("event_id") if isinstance(data, dict) and isinstance(data.get("event_id"), str) else None
        if validation.too_deep(data):
            return self.error("invalid_event", f"the event nests deeper than {validation.MAX_DEPTH} levels", None,
                              client_id)
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return self.error("invalid_event", "an event is a JSON object with a string `type`", "type", client_id)
        model = _CLIENT_EVENTS.get(data["type"])
        if model is None:
            return self.error("invalid_event_type", f"unknown event type {data['type']!r}", "type", client_id)
        self._handling = data["type"]
        try:
            if self._validate(model, data, client_id):
                getattr(self, "_on_" + data["type"].replace(".", "_"))(data, client_id)
        except ProtocolError as e:
            self.error(e.code, e.message, e.param, client_id)
        except Exception:  # a bug: this event fails, and only this event; the session goes on
            log.exception("session %s: %s failed", self.session_id, data["type"])
            self.error("server_error", f"the server failed to handle {data['type']}", None, client_id, "server_error")
        finally:
            self._handling = None
        return None

    def _validate(self, model: type[BaseModel], data: dict, client_id: str | None) -> bool:
        """The event against the SDK's type. A session.update loses only its invalid fields (each gets an
        error, as OpenAI does); any other invalid event is refused whole."""
        for _ in range(MAX_INVALID_FIELDS):
            try:
                model.model_validate(validation.references_as_messages(data))
                return True
            except ValidationError as e:
                err = e.errors()[0]
                param = ".".join(str(p) for p in err["loc"] if not _branch(p))
                self.error("invalid_value", f"{param}: {err['msg']}", param, client_id)
                if data["type"] != "session.update" or not _drop(data, err["loc"]):
                    return False
        return False

    def handle_binary(self, data: bytes) -> None:
        """Extension: a binary WebSocket frame is raw input audio in the session's input format."""
        self.session.append_audio(data)

    def _on_session_update(self, data: dict, cid: str | None) -> None:
        sess = self.session
        # Types and ranges first (server/validation.py), then what this server can honour (server/session_config.py):
        # each field refused gets its error, the rest applies.
        update, problems = validation.session_update(data.get("session"), self.instructions_fit)
        for problem in problems:
            self.error(*problem, cid)
        new, errors = session_update(sess.config, update)
        if new.kind != sess.config.kind:
            raise ProtocolError("invalid_value", "session.type cannot change during a session", "session.type")
        for e in errors:  # each field that cannot be honoured; the rest applies, as OpenAI does
            self.error(e.code, e.message, e.param, cid)
        sess.update(new)
        self.emit("session.updated", session=self._session())

    def _on_input_audio_buffer_append(self, data: dict, cid: str | None) -> None:
        try:
            audio = base64.b64decode(data["audio"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_value", "audio is not valid base64", "audio") from None
        if problem := validation.container_problem(audio, "audio"):
            raise ProtocolError(*problem)
        self.session.append_audio(audio, cid)

    def _on_input_audio_buffer_commit(self, data: dict, cid: str | None) -> None:
        self.session.commit(cid)

    def _on_input_audio_buffer_clear(self, data: dict, cid: str | None) -> None:
        self.session.clear_buffer()

    def _on_conversation_item_create(self, data: dict, cid: str | None) -> None:
        item = data["item"]
        where = {"item_id": item.get("id"), "previous_item_id": data.get("previous_item_id"), "event_id": cid}
        if item.get("type") in ("function_call", "function_call_output"):
            if not item.get("call_id"):
                raise ProtocolError("invalid_value", "a function item needs its call_id", "item.call_id")
            if item["type"] == "function_call" and not item.get("name"):
                raise ProtocolError("invalid_value", "a function_call needs its name", "item.name")
            self.session.create_function_item(item["type"], call_id=item["call_id"], name=item.get("name"),
                                              arguments=item.get("arguments") or "", output=item.get("output") or "",
                                              **where)
            return
        if item.get("type") != "message":
            raise ProtocolError("invalid_value", f"item type {item.get('type')!r} is not supported", "item.type")
        text, audio = self._message_content(item, "item")
        self.session.create_item(item.get("role"), text=text, audio=audio, **where)

    def _message_content(self, item: dict, where: str) -> tuple[str | None, np.ndarray | None]:
        """A message item's text and user clip (16 kHz); ProtocolError names the part (`where`: the item's param)."""
        role = item.get("role")
        text, audio = [], None
        for i, part in enumerate(item.get("content") or []):
            kind = part.get("type")
            if kind in ("input_text", "text", "output_text"):
                text.append(part.get("text") or "")
            elif kind == "input_audio" and role == "user":
                try:
                    raw = base64.b64decode(part.get("audio") or "", validate=True)
                except (binascii.Error, ValueError):
                    raise ProtocolError("invalid_value", "audio is not valid base64",
                                        f"{where}.content.{i}.audio") from None
                if problem := validation.container_problem(raw, f"{where}.content.{i}.audio"):
                    raise ProtocolError(*problem)
                audio = _decode_clip(raw, self.session.config.input_format)
                if problem := validation.clip_problem(audio, f"{where}.content.{i}.audio"):
                    raise ProtocolError(*problem)
            else:
                raise ProtocolError("invalid_value", f"content type {kind!r} is not supported for a {role} message",
                                    f"{where}.content.{i}.type")
        if not text and audio is None:
            raise ProtocolError("invalid_value", "the message has no content", f"{where}.content")
        return ("".join(text) if text else None), audio

    def _on_conversation_item_truncate(self, data: dict, cid: str | None) -> None:
        self.session.truncate(data["item_id"], data["content_index"], data["audio_end_ms"], cid)

    def _on_conversation_item_delete(self, data: dict, cid: str | None) -> None:
        self.session.delete_item(data["item_id"], cid)

    def _on_conversation_item_retrieve(self, data: dict, cid: str | None) -> None:
        self.session.retrieve_item(data["item_id"], cid)

    def _on_response_create(self, data: dict, cid: str | None) -> None:
        params = data.get("response") or {}
        args = response_params(params)
        if params.get("input") is not None:
            if args["in_conversation"]:
                raise ProtocolError("invalid_value", "response.input (a context of its own) is supported for an "
                                    "out-of-band response: set conversation to \"none\"", "response.input")
            args["context"] = self._response_input(params["input"])
        self.session.create_response(**args, event_id=cid)

    def _response_input(self, entries: list) -> list:
        """response.input -> Session.create_response's `context`: an item id per reference, (role, text, clip)
        per message given inline."""
        context: list = []
        for i, entry in enumerate(entries):
            where = f"response.input.{i}"
            if entry.get("type") == "item_reference":
                if not isinstance(entry.get("id"), str) or not entry["id"]:
                    raise ProtocolError("invalid_value", "an item_reference needs the id of an item", where + ".id")
                context.append(entry["id"])
            elif entry.get("type") == "message":
                context.append((entry.get("role"), *self._message_content(entry, where)))
            else:
                raise ProtocolError("invalid_value", f"item type {entry.get('type')!r} is not supported in "
                                    "response.input (item references and messages are)", where + ".type")
        return context

    def _on_response_cancel(self, data: dict, cid: str | None) -> None:
        self.session.cancel_response("client_cancelled", cid)

    def _on_output_audio_buffer_clear(self, data: dict, cid: str | None) -> None:
        self.session.cancel_response("client_cancelled", cid, quiet=True)
        self.audio_out.clear()  # also audio of a response that is done but still playing

    # ---- server -> client
    def on_session_event(self, ev: s.Event) -> None:
        if isinstance(ev, s.ResponseAudio):
            self.audio_out.play(ev.pcm)
        elif isinstance(ev, s.ResponseText):
            r = ev.response
            kind = "response.output_audio_transcript.delta" if r.audio else "response.output_text.delta"
            self.emit(kind, **self._where(r), delta=ev.delta)
        elif isinstance(ev, s.SpeechEvent):
            if ev.kind == "started":
                self.emit("input_audio_buffer.speech_started", audio_start_ms=ev.audio_ms, item_id=ev.item_id)
                if self.session.config.turn_detection.interrupt_response:
                    self.audio_out.clear()  # barge-in: even a finished response may still be playing
            else:
                self.emit("input_audio_buffer.speech_stopped", audio_end_ms=ev.audio_ms, item_id=ev.item_id)
        elif isinstance(ev, s.AudioCommitted):
            self.emit("input_audio_buffer.committed", item_id=ev.item.id, previous_item_id=ev.previous_item_id)
            self._item_added(ev.item, ev.previous_item_id)
        elif isinstance(ev, s.ItemEvent):
            self._item_event(ev)
        elif isinstance(ev, s.Transcription):
            self._transcription(ev)
        elif isinstance(ev, s.ResponseStarted):
            self._response_started(ev.response)
        elif isinstance(ev, s.ResponseDone):
            self._response_done(ev.response)
        elif isinstance(ev, s.FunctionCall):
            self._function_call(ev.response, ev.item)
        elif isinstance(ev, s.SessionError):
            self.error(ev.code, ev.message, ev.param, ev.event_id, ev.type)
            if ev.fatal:
                self.send_event(CLOSE)

    def _where(self, r: s.Response) -> dict:
        return {"response_id": r.id, "item_id": r.item.id, "output_index": 0, "content_index": 0}

    def _item_added(self, item: s.ConvItem, previous: str | None) -> None:
        self.emit("conversation.item.added", item=item_json(item), previous_item_id=previous)
        self.emit("conversation.item.done", item=item_json(item), previous_item_id=previous)

    def _item_event(self, ev: s.ItemEvent) -> None:
        if ev.kind == "added":
            self._item_added(ev.item, ev.previous_item_id)
        elif ev.kind == "deleted":
            self.emit("conversation.item.deleted", item_id=ev.item.id)
        elif ev.kind == "retrieved":
            self.emit("conversation.item.retrieved", item=item_json(ev.item))
        elif ev.kind == "truncated":
            self.emit("conversation.item.truncated", item_id=ev.item.id, content_index=0,
                      audio_end_ms=ev.audio_end_ms)
        elif ev.kind == "cleared":
            self.emit("input_audio_buffer.cleared")

    def _transcription(self, ev: s.Transcription) -> None:
        base = {"item_id": ev.item_id, "content_index": 0}
        if ev.error is not None:
            self.emit("conversation.item.input_audio_transcription.failed", **base,
                      error={"type": "transcription_error", "code": "transcription_failed", "message": ev.error})
        elif ev.delta is not None:
            self.emit("conversation.item.input_audio_transcription.delta", **base, delta=ev.delta)
        else:
            item = self.session.item(ev.item_id)
            seconds = next((p.audio_ms / 1000 for p in item.content if p.type == "input_audio"), 0.0) if item else 0.0
            self.emit("conversation.item.input_audio_transcription.completed", **base, transcript=ev.transcript,
                      usage={"type": "duration", "seconds": seconds})

    def _response_started(self, r: s.Response) -> None:
        self.emit("response.created", response=response_json(r, self.conversation_id))
        item = item_json(r.item)
        self.emit("response.output_item.added", response_id=r.id, output_index=0, item={**item, "content": []})
        if r.in_conversation:
            previous = self.session.previous_item_id(r.item.id)
            self.emit("conversation.item.added", item={**item, "content": []}, previous_item_id=previous)
        self.emit("response.content_part.added", **self._where(r), part=part_json(r, empty=True))
        if r.audio:
            self.audio_out.start(r.id, r.item.id, self.session.config.output_format)

    def _function_call(self, r: s.Response, item: s.ConvItem) -> None:
        """A call the model made, whole: its output item, its arguments (one delta), done."""
        index = r.calls.index(item) + 1
        where = {"response_id": r.id, "item_id": item.id, "output_index": index}
        self.emit("response.output_item.added", response_id=r.id, output_index=index,
                  item={**item_json(item), "arguments": "", "status": "in_progress"})
        if r.in_conversation:
            self.emit("conversation.item.added", item={**item_json(item), "arguments": "", "status": "in_progress"},
                      previous_item_id=self.session.previous_item_id(item.id))
        self.emit("response.function_call_arguments.delta", **where, call_id=item.call_id, delta=item.arguments)
        self.emit("response.function_call_arguments.done", **where, call_id=item.call_id, name=item.name,
                  arguments=item.arguments)
        self.emit("response.output_item.done", response_id=r.id, output_index=index, item=item_json(item))
        if r.in_conversation:
            self.emit("conversation.item.done", item=item_json(item))

    def _response_done(self, r: s.Response) -> None:
        where = self._where(r)
        if r.audio:
            self.audio_out.end(r.id)  # over a WebSocket, the last delta goes out now
            self.emit("response.output_audio.done", **where)
            self.emit("response.output_audio_transcript.done", **where, transcript=r.item.content[0].transcript or "")
        else:
            self.emit("response.output_text.done", **where, text=r.item.content[0].text or "")
        self.emit("response.content_part.done", **where, part=part_json(r))
        self.emit("response.output_item.done", response_id=r.id, output_index=0, item=item_json(r.item))
        if r.in_conversation and self.session.item(r.item.id) is not None:  # not deleted while it ran
            self.emit("conversation.item.done", item=item_json(r.item))
        self.emit("response.done", response=response_json(r, self.conversation_id))
        if self.on_response is not None:
            self.on_response(r)


MAX_INVALID_FIELDS = 16  # a session.update with more invalid fields than this is refused whole


def _branch(part: object) -> bool:
    """pydantic names the union branch it tried (a class name, or a tag) in an error's location: not a field."""
    return isinstance(part, str) and (part[:1].isupper() or part.startswith(("function-", "tagged-union")))


def _drop(data: dict, loc: tuple) -> bool:
    """Remove the field an error's location names (the deepest one present); False if none is. A wrong `type`
    takes its whole object with it (an object without its type means nothing, and would only fail again)."""
    path: list[tuple[object, object]] = []  # (container, key) down to the deepest field present
    node = data
    for part in loc:
        present = part in node if isinstance(node, dict) else (
            isinstance(node, list) and isinstance(part, int) and part < len(node))
        if present:
            path.append((node, part))
            node = node[part]
    if path and path[-1][1] == "type" and len(path) > 1:
        path.pop()
    if not path or path[-1][0] is data:
        return False
    container, key = path[-1]
    del container[key]
    return True


def response_params(params: dict) -> dict:
    """response.create's `response` object -> Session.create_response's arguments. ProtocolError names a field
    that cannot be honoured (then no response is created)."""
    out: dict = {}
    if params.get("output_modalities") is not None:
        modalities = params["output_modalities"]
        if not modalities or any(m not in ("audio", "text") for m in modalities):
            raise ProtocolError("invalid_value", "output_modalities must be [\"audio\"] or [\"text\"]",
                                "response.output_modalities")
        out["output_audio"] = "audio" in modalities
    if params.get("max_output_tokens") is not None:
        out["max_output_tokens"] = max_tokens(params["max_output_tokens"], "response.max_output_tokens")
    if params.get("instructions") is not None:
        out["instructions"] = str(params["instructions"])
    metadata = params.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items()):
            raise ProtocolError("invalid_value", "metadata is at most 16 string pairs (keys up to 64 characters, "
                                "values up to 512)", "response.metadata")
        out["metadata"] = dict(metadata)
    conversation = params.get("conversation", "auto")
    if conversation not in ("auto", "none"):
        raise ProtocolError("invalid_value", "conversation must be auto or none", "response.conversation")
    out["in_conversation"] = conversation == "auto"
    if params.get("tools") is not None:
        try:
            out["tools"] = parse_tools(params["tools"])
        except ToolError as e:
            raise ProtocolError("invalid_value", str(e), "response.tools" + e.where) from None
    return out


def _decode_clip(raw: bytes, fmt: AudioFormat) -> np.ndarray:
    """A whole clip: decoded, and what the resampler still holds flushed (its last few ms)."""
    decoder = InputDecoder(fmt)
    return np.concatenate([decoder.decode(raw), decoder.flush()])
