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
from dataclasses import replace

import numpy as np
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from pydantic import BaseModel, ValidationError

from server import validation
from server.audio_out import AudioOutFactory
from server.errors import error_body
from streaming import session as s
from streaming.audio import AudioFormat, InputDecoder, UnsupportedFormat
from streaming.vad import VadConfig

__all__ = ["CLOSE", "ProtocolError", "RealtimeAdapter", "apply_session_update", "session_object"]

log = logging.getLogger(__name__)

_UNION = typing.get_args(RealtimeClientEvent)[0]  # Annotated[Union[...], discriminator]
_CLIENT_EVENTS: dict[str, type[BaseModel]] = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in typing.get_args(_UNION)
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


CLOSE = {"type": "_close"}  # not sent: tells the transport to close after what is queued before it


def event_id() -> str:
    return f"event_{secrets.token_hex(10)}"


# ---- session configuration
def apply_session_update(config: s.SessionConfig, update: dict) -> s.SessionConfig:
    """A GA `session` object applied to the current config. Unknown fields are ignored; values this server
    cannot honour raise ProtocolError naming the param."""
    changes: dict = {}
    kind = update.get("type", config.kind)
    if kind not in ("realtime", "transcription"):
        raise ProtocolError("invalid_value", f"session.type must be realtime or transcription, got {kind!r}",
                            "session.type")
    changes["kind"] = kind
    if update.get("instructions") is not None:
        changes["instructions"] = str(update["instructions"])
    audio = update.get("audio") or {}
    inp, out = audio.get("input") or {}, audio.get("output") or {}
    for key, part, param in (("input_format", inp, "session.audio.input.format"),
                             ("output_format", out, "session.audio.output.format")):
        if part.get("format") is not None:
            try:
                changes[key] = AudioFormat.parse(part["format"])
            except UnsupportedFormat as e:
                raise ProtocolError("invalid_value", str(e), param) from None
    if "turn_detection" in inp:
        changes["turn_detection"] = _turn_detection(inp["turn_detection"], config.turn_detection)
    if "transcription" in inp:
        changes["transcribe_input"] = inp["transcription"] is not None
    if update.get("output_modalities") is not None:
        modalities = list(update["output_modalities"])
        if modalities not in (["audio"], ["text"], ["audio", "text"], ["text", "audio"]):
            raise ProtocolError("invalid_value", "output_modalities must be [\"audio\"] or [\"text\"]",
                                "session.output_modalities")
        changes["output_audio"] = "audio" in modalities
    if update.get("max_output_tokens") is not None:
        changes["max_output_tokens"] = _max_tokens(update["max_output_tokens"], "session.max_output_tokens")
    ext = update.get("lfm_audio") or {}  # our sampling extensions
    for key, cast, lo, hi in (("audio_temperature", float, 0.0, 5.0), ("audio_top_k", int, 0, 2049),
                              ("text_temperature", float, 0.0, 5.0)):
        if ext.get(key) is not None:
            value = cast(ext[key])
            if not lo <= value <= hi:
                raise ProtocolError("invalid_value", f"{key} must be in [{lo}, {hi}]", f"session.lfm_audio.{key}")
            changes[key] = value
    if "seed" in ext:
        changes["seed"] = None if ext["seed"] is None else int(ext["seed"])
    return replace(config, **changes)


def _turn_detection(td: dict | None, current: s.TurnDetection | None) -> s.TurnDetection | None:
    if td is None:
        return None
    if td.get("type", "server_vad") != "server_vad":
        raise ProtocolError("invalid_value", f"turn_detection.type {td.get('type')!r} is not supported; use "
                            "server_vad or null", "session.audio.input.turn_detection.type")
    base = current or s.TurnDetection()
    vad = base.vad
    try:
        vad = VadConfig(
            threshold=float(td.get("threshold", vad.threshold)),
            prefix_padding_ms=int(td.get("prefix_padding_ms", vad.prefix_padding_ms)),
            silence_duration_ms=int(td.get("silence_duration_ms", vad.silence_duration_ms)),
        )
    except (TypeError, ValueError) as e:
        raise ProtocolError("invalid_value", str(e), "session.audio.input.turn_detection") from None
    if not 0 <= vad.threshold <= 1:
        raise ProtocolError("invalid_value", "threshold must be in [0, 1]",
                            "session.audio.input.turn_detection.threshold")
    return s.TurnDetection(vad, bool(td.get("create_response", base.create_response)),
                           bool(td.get("interrupt_response", base.interrupt_response)))


def _max_tokens(value: object, param: str) -> int:
    if value == "inf":
        return 1 << 30
    if isinstance(value, bool) or not isinstance(value, int) or not value >= 1:
        raise ProtocolError("invalid_value", "max_output_tokens must be a positive integer or \"inf\"", param)
    return value


def session_object(config: s.SessionConfig, session_id: str, model: str) -> dict:
    td = config.turn_detection
    turn = None if td is None else {
        "type": "server_vad", "threshold": td.vad.threshold, "prefix_padding_ms": td.vad.prefix_padding_ms,
        "silence_duration_ms": td.vad.silence_duration_ms, "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }
    transcription = {"model": model} if config.transcribe_input or config.kind == "transcription" else None
    audio_in = {"format": config.input_format.to_openai(), "turn_detection": turn, "transcription": transcription}
    if config.kind == "transcription":
        return {"type": "transcription", "id": session_id, "object": "realtime.transcription_session",
                "audio": {"input": audio_in}}
    return {
        "type": "realtime", "id": session_id, "object": "realtime.session", "model": model,
        "instructions": config.instructions, "output_modalities": ["audio"] if config.output_audio else ["text"],
        "max_output_tokens": config.max_output_tokens,
        "audio": {"input": audio_in, "output": {"format": config.output_format.to_openai(), "voice": "alloy"}},
        "lfm_audio": {"audio_temperature": config.audio_temperature, "audio_top_k": config.audio_top_k,
                      "text_temperature": config.text_temperature, "seed": config.seed},
    }


# ---- the adapter
class RealtimeAdapter:
    def __init__(self, send: Callable[[dict], None], audio_out: AudioOutFactory, *, model: str,
                 max_event_bytes: int, on_response: Callable | None = None) -> None:
        self.send_event = send
        self.audio_out = audio_out(self.emit)
        self.model = model
        self.max_event_bytes = max_event_bytes
        self.on_response = on_response  # metrics hook: called with each finished Response
        self.session: s.Session | None = None
        self.session_id = f"sess_{secrets.token_hex(10)}"

    def start(self, session: s.Session) -> None:
        self.session = session
        self.emit("session.created", session=self._session())

    def instructions_fit(self, text: str) -> validation.Problem | None:
        engine = self.session.engine
        return validation.instructions_problem(text, engine.tokenizer, engine.config.max_context)

    def _session(self) -> dict:
        return session_object(self.session.config, self.session_id, self.model)

    def emit(self, type_: str, **fields: object) -> None:
        self.send_event({"type": type_, "event_id": event_id(), **fields})

    def error(self, code: str, message: str, param: str | None = None, client_event_id: str | None = None,
              type_: str = "invalid_request_error") -> None:
        self.emit("error", error=error_body(code, message, type_=type_, param=param, event_id=client_event_id))

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
        try:
            model.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            # pydantic names the union branch it tried (a class name) in the location: not a field
            param = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
            return self.error("invalid_value", f"{param}: {err['msg']}", param, client_id)
        try:
            getattr(self, "_on_" + data["type"].replace(".", "_"))(data, client_id)
        except ProtocolError as e:
            self.error(e.code, e.message, e.param, client_id)
        except Exception:  # a bug: this event fails, and only this event; the session goes on
            log.exception("session %s: %s failed", self.session_id, data["type"])
            self.error("server_error", f"the server failed to handle {data['type']}", None, client_id, "server_error")
        return None

    def handle_binary(self, data: bytes) -> None:
        """Extension: a binary WebSocket frame is raw input audio in the session's input format."""
        self.session.append_audio(data)

    def _on_session_update(self, data: dict, cid: str | None) -> None:
        sess = self.session
        update, problems = validation.session_update(data.get("session"), self.instructions_fit)
        for problem in problems:
            self.error(*problem, cid)
        new = apply_session_update(sess.config, update)
        if new.kind != sess.config.kind:
            raise ProtocolError("invalid_value", "session.type cannot change during a session", "session.type")
        sess.update(new)
        self.emit("session.updated", session=self._session())

    def _on_input_audio_buffer_append(self, data: dict, cid: str | None) -> None:
        try:
            audio = base64.b64decode(data["audio"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_value", "audio is not valid base64", "audio") from None
        self.session.append_audio(audio, cid)

    def _on_input_audio_buffer_commit(self, data: dict, cid: str | None) -> None:
        self.session.commit(cid)

    def _on_input_audio_buffer_clear(self, data: dict, cid: str | None) -> None:
        self.session.clear_buffer()

    def _on_conversation_item_create(self, data: dict, cid: str | None) -> None:
        item = data["item"]
        if item.get("type") != "message":
            raise ProtocolError("invalid_value", "only message items are supported", "item.type")
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
                                        f"item.content.{i}.audio") from None
                audio = _decode_clip(raw, self.session.config.input_format)
                if problem := validation.clip_problem(audio, f"item.content.{i}.audio"):
                    raise ProtocolError(*problem)
            else:
                raise ProtocolError("invalid_value", f"content type {kind!r} is not supported for a {role} message",
                                    f"item.content.{i}.type")
        if not text and audio is None:
            raise ProtocolError("invalid_value", "the message has no content", "item.content")
        self.session.create_item(role, text="".join(text) if text else None, audio=audio, item_id=item.get("id"),
                                 previous_item_id=data.get("previous_item_id"), event_id=cid)

    def _on_conversation_item_truncate(self, data: dict, cid: str | None) -> None:
        self.session.truncate(data["item_id"], data["content_index"], data["audio_end_ms"], cid)

    def _on_conversation_item_delete(self, data: dict, cid: str | None) -> None:
        self.session.delete_item(data["item_id"], cid)

    def _on_conversation_item_retrieve(self, data: dict, cid: str | None) -> None:
        self.session.retrieve_item(data["item_id"], cid)

    def _on_response_create(self, data: dict, cid: str | None) -> None:
        params = data.get("response") or {}
        modalities = params.get("output_modalities")
        audio = None if modalities is None else "audio" in modalities
        limit = params.get("max_output_tokens")
        limit = None if limit is None else _max_tokens(limit, "response.max_output_tokens")
        self.session.create_response(max_output_tokens=limit, output_audio=audio, event_id=cid)

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
        self.emit("response.created", response=response_json(r, self.session))
        item = item_json(r.item)
        self.emit("response.output_item.added", response_id=r.id, output_index=0, item={**item, "content": []})
        previous = self.session.previous_item_id(r.item.id)
        self.emit("conversation.item.added", item={**item, "content": []}, previous_item_id=previous)
        self.emit("response.content_part.added", **self._where(r), part=_part_json(r, empty=True))
        if r.audio:
            self.audio_out.start(r.id, r.item.id, self.session.config.output_format)

    def _response_done(self, r: s.Response) -> None:
        where = self._where(r)
        if r.audio:
            self.audio_out.end(r.id)  # over a WebSocket, the last delta goes out now
            self.emit("response.output_audio.done", **where)
            self.emit("response.output_audio_transcript.done", **where, transcript=r.item.content[0].transcript or "")
        else:
            self.emit("response.output_text.done", **where, text=r.item.content[0].text or "")
        self.emit("response.content_part.done", **where, part=_part_json(r))
        self.emit("response.output_item.done", response_id=r.id, output_index=0, item=item_json(r.item))
        self.emit("conversation.item.done", item=item_json(r.item))
        self.emit("response.done", response=response_json(r, self.session))
        if self.on_response is not None:
            self.on_response(r)


def _decode_clip(raw: bytes, fmt: AudioFormat) -> np.ndarray:
    return InputDecoder(fmt).decode(raw)


def _part_json(r: s.Response, empty: bool = False) -> dict:
    p = r.item.content[0]
    if r.audio:
        return {"type": "audio", "transcript": "" if empty else (p.transcript or "")}
    return {"type": "text", "text": "" if empty else (p.text or "")}


def item_json(item: s.ConvItem) -> dict:
    content = []
    for p in item.content:
        part: dict = {"type": p.type}
        if p.type in ("input_text", "output_text"):
            part["text"] = p.text or ""
        else:
            part["transcript"] = p.transcript
        content.append(part)
    return {"id": item.id, "object": "realtime.item", "type": "message", "role": item.role, "status": item.status,
            "content": content}


def response_json(r: s.Response, session: s.Session) -> dict:
    out: dict = {"id": r.id, "object": "realtime.response", "status": r.status,
                 "output_modalities": ["audio"] if r.audio else ["text"],
                 "output": [item_json(r.item)] if r.status != "in_progress" else []}
    if r.status == "cancelled":
        out["status_details"] = {"type": "cancelled", "reason": r.reason if r.reason in (
            "turn_detected", "client_cancelled") else "client_cancelled"}
    elif r.status == "incomplete":
        out["status_details"] = {"type": "incomplete", "reason": "max_output_tokens"}
    elif r.status == "failed":
        out["status_details"] = {"type": "failed", "error": {"type": "server_error", "code": r.reason or "failed"}}
    u = r.usage
    if r.status != "in_progress":
        inp = u.input_positions + u.cached_positions
        out_tokens = u.output_text_tokens + u.output_audio_frames
        out["usage"] = {"total_tokens": inp + out_tokens, "input_tokens": inp, "output_tokens": out_tokens,
                        "input_token_details": {"cached_tokens": u.cached_positions},
                        "output_token_details": {"text_tokens": u.output_text_tokens,
                                                 "audio_tokens": u.output_audio_frames}}
    return out
