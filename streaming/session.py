"""One user's conversation, independent of the transport: input audio, turn detection, items,
responses, barge-in, truncation, input transcription. It runs on the server's event loop; the engine's
events hop onto the loop through `engine_sink`.

The session owns the semantics; the transport adapters own the wire format. It emits typed events
(below) that server/realtime.py turns into OpenAI Realtime events for both WebSocket and WebRTC.
States: idle -> user speaking -> committed -> responding -> idle. With speculative start (streaming/
speculation.py), a pause in the user's speech already hands the engine the turn so far; the turn's commit then
confirms it (the same clip: a speculating session's turn ends SPECULATION_PAD_MS after its last speech, the rest of
the silence is dropped) and what the engine prepared goes out at once; speech first drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import numpy as np

from models.defaults import (
    ASR_PROMPT,
    INPUT_RATE,
    MAX_INPUT_BUFFER_S,
    MAX_RESPONSE_TOKENS,
    OUTPUT_RATE,
    SPECULATION_PAD_MS,
)
from streaming import messages as m
from streaming.audio import AudioFormat, InputDecoder, SampleBuffer
from streaming.endpoint import SemanticTurnDetector
from streaming.engine import Engine, EngineSession
from streaming.session_context import INSTRUCTIONS_ID, ResponseContexts
from streaming.session_speculation import MIN_COMMIT_MS, SpeculativeTurns
from streaming.session_types import (
    INF_TOKENS,
    AudioCommitted,
    ConvItem,
    Event,
    FunctionCall,
    ItemEvent,
    Part,
    Response,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseText,
    SessionConfig,
    SessionError,
    SpeechEvent,
    Transcription,
    TurnDetection,
    new_id,
)
from streaming.tools import Tool, ToolError, call_text, output_text, parse_calls, system_prompt
from streaming.vad import SpeechPaused, SpeechResumed, SpeechStarted, TurnDetector, TurnEvent

# The types live in streaming/session_types.py; they are named here too, where the session's users look.
__all__ = [
    "INF_TOKENS", "AudioCommitted", "ConvItem", "Event", "FunctionCall", "ItemEvent", "Part", "Response",
    "ResponseAudio", "ResponseDone", "ResponseStarted", "ResponseText", "Session", "SessionConfig", "SessionError",
    "SpeechEvent", "Transcription", "TurnDetection",
]

log = logging.getLogger(__name__)
IDLE_KEEP_MS = 1000  # server VAD between turns: kept beyond prefix_padding_ms (covers the detector's delay)


class Session(SpeculativeTurns, ResponseContexts):
    def __init__(self, engine: Engine, emit: Callable[[Event], None], config: SessionConfig | None = None,
                 *, max_buffer_s: float = MAX_INPUT_BUFFER_S, max_output_tokens: int = MAX_RESPONSE_TOKENS,
                 media_input: AudioFormat | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.emit = emit
        self.config = config or SessionConfig()
        self.max_buffer_s = max_buffer_s
        self.max_output_tokens_cap = max_output_tokens
        self.engine = engine
        # EngineFull propagates: refused. The handle holds the conversation (the one copy): each client item
        # is a model item whose `view` is its ConvItem; the instructions are an item without one.
        self.handle: EngineSession = engine.open(self.engine_sink)
        self.response: Response | None = None
        self.responses: dict[str, Response] = {}
        self.transcribing: dict[str, list[str]] = {}
        self.closed = False
        self.opened = time.monotonic()
        # The transport's own input format (WebRTC's decoded Opus), when it has one: then audio.input.format
        # (still reported to the client) does not describe the audio, and session.update does not change it.
        self._media_input = media_input
        self._decoder = InputDecoder(media_input or self.config.input_format)
        self._vad = self._new_detector()
        self._buffer = SampleBuffer()  # 16 kHz input since the last commit
        self._buffer_start_ms = 0  # session timeline ms of _buffer[0]
        self._overflowed = False  # the buffer filled up: input is refused (and was said once) until a commit or clear
        self._written_ms = 0.0  # total input written, ms
        self._received_ms = 0.0  # total input received, ms: ahead of _written_ms by what the resampler holds
        self._speech: tuple[str, int, float] | None = None  # (item id, start ms, wall time) while speaking
        self._vad_origin_ms = 0  # session ms where the detector's own timeline starts
        self._next_response: dict | None = None  # requested while an interrupted one winds down
        self._contexts: dict[str, tuple[list, list[str]]] = {}  # response id -> (items hidden, items added)
        self._spec: tuple[str, int, int, Response, int] | None = None  # (item id, start, end, response, clip ms)
        self._instructions_added = False
        self.input_audio_s = 0.0
        self._set_instructions(self.config.instructions)

    # ---- configuration
    def update(self, config: SessionConfig) -> None:
        self.handle.drop()  # what it prepared may no longer be what would be asked
        old = self.config
        self.config = config
        if config.input_format != old.input_format and self._media_input is None:
            self._decoder = InputDecoder(config.input_format)
        td, old_td = config.turn_detection, old.turn_detection
        if td != old_td:
            if td is not None and self._vad is not None and td.kind == old_td.kind:
                self._vad.set_config(td.vad)  # keeps its timeline and noise model
                if td.kind == "semantic_vad":
                    self._vad.eagerness = td.eagerness
            else:
                self._vad = self._new_detector()
                self._speech = None
        if (config.instructions, config.tools, config.tool_choice) != (old.instructions, old.tools, old.tool_choice):
            self._set_instructions(config.instructions)

    def _new_detector(self) -> TurnDetector | SemanticTurnDetector | None:
        td = self.config.turn_detection
        self._vad_origin_ms = round(getattr(self, "_written_ms", 0.0))
        if td is None:
            return None
        if td.kind == "semantic_vad":  # the model runs on a worker thread: the event loop is not held
            detector = SemanticTurnDetector(td.vad, td.eagerness, background=True, pause_ms=SPECULATION_PAD_MS)
            detector.on_answer = lambda: self.loop.call_soon_threadsafe(self._poll_detector, detector)
            return detector
        return TurnDetector(td.vad, pause_ms=SPECULATION_PAD_MS)

    def _poll_detector(self, detector: SemanticTurnDetector) -> None:
        """An end-of-turn answer is ready: act on it now, not at the next audio (a client may be waiting)."""
        if not self.closed and self._vad is detector:
            for ev in detector.poll():
                self._on_vad(ev)

    def _set_instructions(self, text: str, tools: tuple[Tool, ...] | None = None) -> None:
        """The system prompt item: instructions and the tool list (the session's, unless given)."""
        cfg = self.config
        text = ASR_PROMPT if cfg.kind == "transcription" else system_prompt(
            text, cfg.tools if tools is None else tools, cfg.tool_choice)
        if self._instructions_added:
            self.handle.delete_item(INSTRUCTIONS_ID)
        self.handle.add_item(INSTRUCTIONS_ID, "system", text=text, first=True)
        self._instructions_added = True

    # ---- input audio
    def append_audio(self, data: bytes, event_id: str | None = None) -> None:
        """Input audio in the session's input format (or the transport's media_input), from any transport."""
        if not self.closed:
            before = self._decoder.received_s
            pcm = self._decoder.decode(data)
            self._received_ms += 1000 * (self._decoder.received_s - before)
            self._take(pcm, event_id)

    def _take(self, pcm: np.ndarray, event_id: str | None = None) -> None:
        if self._overflowed or (len(self._buffer) + len(pcm)) / INPUT_RATE > self.max_buffer_s:
            # Full: refused until the buffer is committed or cleared, said once (not once per append). The
            # timeline and turn detection still count the refused audio, so a monologue's turn ends when the
            # speaker stops and commits what the buffer kept.
            if not self._overflowed:
                self._overflowed = True
                self.emit(SessionError("input_audio_buffer_overflow", f"the input audio buffer holds at most "
                                       f"{self.max_buffer_s:g} s; the audio after that is dropped until it is "
                                       "committed or cleared", "audio", event_id))
        else:
            self._buffer.append(pcm)
            self.input_audio_s += len(pcm) / INPUT_RATE
        self._written_ms += 1000 * len(pcm) / INPUT_RATE
        if self._vad is not None:
            for ev in self._vad.push(pcm):
                self._on_vad(ev)
            if self._speech is None:
                self._drop_idle()

    def _drop_idle(self) -> None:
        """Server VAD between turns: only the last prefix_padding_ms can join a turn, so a client streaming
        silence (a WebRTC mic always does) must not fill the buffer up to max_buffer_s. Whole ms, 1 s at a time."""
        ms = INPUT_RATE // 1000
        keep = (self.config.turn_detection.vad.prefix_padding_ms + IDLE_KEEP_MS) * ms
        drop = (len(self._buffer) - keep) // ms * ms
        if drop >= INPUT_RATE:
            self._buffer.drop(drop)
            self._buffer_start_ms += drop // ms

    def _on_vad(self, ev: TurnEvent) -> None:
        # The detector counts from its own start; the protocol counts from the session's first audio.
        td = self.config.turn_detection
        if isinstance(ev, SpeechPaused):
            return self._speculate(ev)
        if isinstance(ev, SpeechResumed):
            return self.handle.drop()
        if isinstance(ev, SpeechStarted):
            self.handle.drop()
            start = ev.audio_start_ms + self._vad_origin_ms
            item_id = new_id("item")
            self._speech = (item_id, start, time.perf_counter())
            self.emit(SpeechEvent("started", start, item_id))
            if self.response is not None and td.interrupt_response:
                self.cancel_response(reason="turn_detected", quiet=True)
        elif self._speech is not None:
            item_id, start_ms, _ = self._speech
            self._speech = None
            end = ev.audio_end_ms + self._vad_origin_ms
            self.emit(SpeechEvent("stopped", end, item_id))
            # When the user stopped speaking, for time-to-first-audio: the audio arrives in real time, so
            # the speech ended as long ago as the input received since its end lasts (counted to the input
            # received, not to what the detector has judged: the resampler and a partial frame lag behind).
            spoken_end_ms = (ev.speech_end_ms if ev.speech_end_ms is not None else ev.audio_end_ms)
            since_s = max(0.0, self._received_ms - spoken_end_ms - self._vad_origin_ms) / 1000
            start = max(start_ms - td.vad.prefix_padding_ms, self._buffer_start_ms)
            clip_end = self._turn_end(end, spoken_end_ms + self._vad_origin_ms)
            spec, self._spec = self._spec, None
            respond = td.create_response and self.config.kind == "realtime"
            if (respond and spec is not None and spec[:3] == (item_id, start, clip_end) and self.response is None
                    and self.handle.speculation == spec[3].id):
                return self._confirm(item_id, spec[3], spec[4], end, time.perf_counter() - since_s)
            self.handle.drop()
            item = self._commit_range(item_id, start, clip_end, until_ms=end)
            if item is not None and respond:
                self.create_response(speech_end=time.perf_counter() - since_s)
        return None

    def commit(self, event_id: str | None = None) -> ConvItem | None:
        """Manual turn (push-to-talk): the whole buffer becomes a user item."""
        tail = self._decoder.flush()  # what the input resampler still holds back
        if tail.size:
            self._take(tail, event_id)
        if 1000 * len(self._buffer) / INPUT_RATE < MIN_COMMIT_MS:
            self.emit(SessionError("input_audio_buffer_commit_empty",  # OpenAI's text: clients match on it
                                   "Error committing input audio buffer: buffer too small. Expected at least "
                                   f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                                   f"{1000 * len(self._buffer) / INPUT_RATE:.2f}ms of audio.", None, event_id))
            return None
        item_id = self._speech[0] if self._speech else new_id("item")
        self._speech = None
        self.handle.drop()
        return self._commit_range(item_id, self._buffer_start_ms, round(self._written_ms))

    def _commit_range(self, item_id: str, start_ms: int, end_ms: int, until_ms: int | None = None) -> ConvItem | None:
        """[start_ms, end_ms) becomes a user item; the buffer is consumed up to until_ms (default end_ms)."""
        a = max(0, round((start_ms - self._buffer_start_ms) * INPUT_RATE / 1000))
        b = max(a, round((end_ms - self._buffer_start_ms) * INPUT_RATE / 1000))
        clip = self._buffer.take(a, b)  # a copy: the engine keeps it
        self._buffer_start_ms = end_ms
        if self._overflowed:  # the refused audio is a gap after the buffer: what the buffer still holds goes too
            self._buffer.clear()
            self._buffer_start_ms = round(self._written_ms)
            self._overflowed = False
        elif until_ms is not None and until_ms > end_ms:
            self._buffer.drop(round((until_ms - end_ms) * INPUT_RATE / 1000))
            self._buffer_start_ms = until_ms
        if len(clip) < INPUT_RATE * MIN_COMMIT_MS // 1000:
            return None
        item = ConvItem(item_id, "user", [Part("input_audio", transcript=None,
                                               audio_ms=1000 * len(clip) // INPUT_RATE)])
        previous = self.previous_item_id()
        self._add(item, audio=clip)
        self.emit(AudioCommitted(item, previous))
        if self.config.kind == "transcription" or self.config.transcribe_input:
            self._transcribe(item)
        return item

    def clear_buffer(self) -> None:
        self.handle.drop()
        self._buffer.clear()
        self._overflowed = False
        self._buffer_start_ms = round(self._written_ms)
        self._speech = None
        if self._vad is not None:
            self._vad = self._new_detector()
        self.emit(ItemEvent("cleared", None))

    # ---- items
    def item(self, item_id: str) -> ConvItem | None:
        """A client-visible item of the conversation."""
        return self.handle.view(item_id)

    def previous_item_id(self, item_id: str | None = None) -> str | None:
        """The client-visible item before `item_id` (None: the last one)."""
        return self.handle.previous_view_id(item_id)

    def _add(self, item: ConvItem, *, audio: np.ndarray | None = None, text: str | None = None,
             after: str | None = None) -> None:
        self.handle.add_item(item.id, item.role, text=text, audio=audio, after=after, view=item)

    def _duplicate(self, item_id: str, event_id: str | None) -> None:
        # OpenAI's code and text (clients match on the code: LiveKit takes it as "the item is there already")
        self.emit(SessionError("item_create_duplicate_item_id",
                               f"Error adding item: an item with id '{item_id}' already exists.", "item.id", event_id))

    def create_function_item(self, kind: str, *, call_id: str, name: str | None = None, arguments: str = "",
                             output: str = "", item_id: str | None = None, previous_item_id: str | None = None,
                             event_id: str | None = None) -> ConvItem | None:
        """A function_call (the assistant's, as LFM2 writes calls) or a function_call_output (a tool turn),
        from the client: history replayed, or a call's result."""
        try:
            if kind == "function_call":
                item = ConvItem("", "assistant", [], type=kind, call_id=call_id, name=name, arguments=arguments)
                text = call_text(name, arguments)
            else:
                item = ConvItem("", "tool", [], type=kind, call_id=call_id, output=output)
                text = output_text(output)
        except ToolError as e:
            self.emit(SessionError("invalid_value", str(e), "item" + e.where, event_id))
            return None
        return self.create_item(item.role, text=text, item_id=item_id, previous_item_id=previous_item_id,
                                event_id=event_id, view=item)

    def create_item(self, role: str, *, text: str | None = None, audio: np.ndarray | None = None,
                    item_id: str | None = None, previous_item_id: str | None = None,
                    event_id: str | None = None, view: ConvItem | None = None) -> ConvItem | None:
        """A message item (or, with `view`, a function item whose model text is `text`)."""
        item_id = item_id or new_id("item")
        if self.item(item_id) is not None:
            self._duplicate(item_id, event_id)
            return None
        if previous_item_id is not None and previous_item_id != "root" and self.item(previous_item_id) is None:
            self.emit(SessionError("item_not_found", f"no item {previous_item_id!r}", "previous_item_id", event_id))
            return None
        content = []
        if audio is not None:
            content.append(Part("input_audio", audio_ms=1000 * len(audio) // INPUT_RATE))
        if text is not None and view is None:
            content.append(Part("input_text" if role != "assistant" else "output_text", text=text))
        item = ConvItem(item_id, role, content) if view is None else view
        item.id = item_id
        if previous_item_id == "root":  # the conversation's start: right after the system instructions
            previous, after = None, INSTRUCTIONS_ID
        else:
            previous = previous_item_id if previous_item_id is not None else self.previous_item_id()
            after = previous_item_id
        try:
            self._add(item, audio=audio, text=text, after=after)
        except ValueError:  # an item the client does not see (the instructions)
            self._duplicate(item_id, event_id)
            return None
        self.emit(ItemEvent("added", item, previous))
        if audio is not None and role == "user" and self.config.transcribe_input:
            self._transcribe(item)
        return item

    def delete_item(self, item_id: str, event_id: str | None = None) -> None:
        item = self.item(item_id)
        if item is None:
            self.emit(SessionError("item_not_found", f"no item {item_id!r}", "item_id", event_id))
            return
        self.handle.delete_item(item_id)
        self.emit(ItemEvent("deleted", item))

    def retrieve_item(self, item_id: str, event_id: str | None = None) -> None:
        item = self.item(item_id)
        if item is None:
            self.emit(SessionError("item_not_found", f"no item {item_id!r}", "item_id", event_id))
            return
        self.emit(ItemEvent("retrieved", item))

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int, event_id: str | None = None) -> None:
        """What the user heard of an assistant item: its audio (and the transcript spoken by then)."""
        item = self.item(item_id)
        if item is None:
            self.emit(SessionError("item_not_found", f"no item {item_id!r}", "item_id", event_id))
            return
        if item.role != "assistant" or not any(p.type == "output_audio" for p in item.content):
            self.emit(SessionError("invalid_value", "only an assistant item with audio can be truncated",
                                   "item_id", event_id))
            return
        part = next(p for p in item.content if p.type == "output_audio")
        if audio_end_ms < 0 or audio_end_ms > part.audio_ms:
            self.emit(SessionError("invalid_value", f"audio_end_ms must be in [0, {part.audio_ms}]", "audio_end_ms",
                                   event_id))
            return
        part.transcript = self.handle.truncate_item(item_id, audio_end_ms)
        part.audio_ms = audio_end_ms
        self.emit(ItemEvent("truncated", item, audio_end_ms=audio_end_ms))

    # ---- responses
    def create_response(self, *, max_output_tokens: int | None = None, output_audio: bool | None = None,
                        event_id: str | None = None, speech_end: float | None = None,
                        instructions: str | None = None, metadata: dict | None = None,
                        in_conversation: bool = True, tools: tuple[Tool, ...] | None = None,
                        context: list | None = None) -> Response | None:
        """A response to the conversation so far. `instructions` and `tools` replace the session's for this one
        response; out of the conversation (`in_conversation` False), what it says is not kept, and `context`
        (item ids, and (role, text, clip) messages) can stand in for the conversation."""
        if self.config.kind == "transcription":
            self.emit(SessionError("invalid_request", "a transcription session does not create responses",
                                   None, event_id))
            return None
        params = {"max_output_tokens": max_output_tokens, "output_audio": output_audio, "event_id": event_id,
                  "speech_end": speech_end, "instructions": instructions, "metadata": metadata,
                  "in_conversation": in_conversation, "tools": tools, "context": context}
        if context is not None and (problem := self._context_problem(context)):
            self.emit(SessionError(*problem, event_id))
            return None
        if self.response is not None and self.response.cancel_requested:
            # The interrupted response is still winding down in the engine: start right after it.
            self._next_response = params
            return None
        if self.response is not None:
            self.emit(SessionError("conversation_already_has_active_response",  # OpenAI's text: clients match on it
                                   f"Conversation already has an active response in progress: {self.response.id}. "
                                   "Wait until the response is finished before creating a new one.", None, event_id))
            return None
        r, request = self._prepare_response(max_output_tokens, output_audio, speech_end, metadata, in_conversation,
                                            own_instructions=instructions is not None or tools is not None)
        if r.own_instructions:  # put back when it is done
            self._set_instructions(self.config.instructions if instructions is None else instructions, tools)
        if context is not None:
            self._isolate(r.id, context)
        self.handle.respond(request, view=r.item if in_conversation else None)
        self._begin(r)
        return r

    def _prepare_response(self, max_output_tokens: int | None = None, output_audio: bool | None = None,
                          speech_end: float | None = None, metadata: dict | None = None, in_conversation: bool = True,
                          own_instructions: bool = False) -> tuple[Response, m.ResponseRequest]:
        """A response and its engine request, with the session's settings where the caller gives none."""
        cfg = self.config
        audio = cfg.output_audio if output_audio is None else output_audio
        limit = min(max_output_tokens or cfg.max_output_tokens, self.max_output_tokens_cap)
        item = ConvItem(new_id("item"), "assistant", [Part("output_audio" if audio else "output_text",
                                                          transcript="" if audio else None,
                                                          text=None if audio else "")], status="in_progress")
        r = Response(new_id("resp"), item, audio, speech_end=speech_end, committed=time.perf_counter(),
                     metadata=metadata, in_conversation=in_conversation, own_instructions=own_instructions)
        return r, m.ResponseRequest(r.id, item.id, m.Mode.CHAT, max_tokens=limit, audio=audio,
                                    text_temperature=cfg.text_temperature, audio_temperature=cfg.audio_temperature,
                                    audio_top_k=cfg.audio_top_k, seed=cfg.seed)

    def _begin(self, r: Response) -> None:
        self.response = r
        self.responses[r.id] = r
        if len(self.responses) > 64:  # keep the recent ones (late engine events find theirs)
            self.responses.pop(next(iter(self.responses)))
        self.emit(ResponseStarted(r))

    def cancel_response(self, reason: str = "client_cancelled", event_id: str | None = None,
                        quiet: bool = False) -> None:
        if self.response is None or self.response.cancel_requested:
            if not quiet:  # OpenAI's text: clients match on it to ignore the race
                self.emit(SessionError("response_cancel_not_active", "Cancellation failed: no active response found",
                                       None, event_id))
            return
        self.response.cancel_requested = True
        self.response.reason = reason
        self.handle.cancel(reason)

    def _on_calls(self, event: m.ToolCalls) -> None:
        """The model wrote function calls: each becomes a function_call item (its text stays in the assistant
        item, where the model wrote it; the item is the client's view of it)."""
        r = self.responses.get(event.response_id)
        if r is None or r is not self.response or r.cancel_requested:
            return
        try:
            calls = parse_calls(event.text)
        except ToolError as e:
            log.warning("response %s: unreadable function call %r: %s", r.id, event.text, e)
            return
        for call in calls:
            item = ConvItem(new_id("item"), "assistant", [], type="function_call", call_id=new_id("call"),
                            name=call.name, arguments=call.arguments)
            r.calls.append(item)
            if r.in_conversation:
                self.handle.add_item(item.id, "assistant", view=item, hidden=True)
            self.emit(FunctionCall(r, item))

    # ---- input transcription (ASR on the user's clip, a second engine request)
    def _transcribe(self, item: ConvItem) -> None:
        rid = f"asr_{item.id}"
        self.transcribing[rid] = []
        self.handle.transcribe(item.id, rid)

    # ---- engine events (engine thread -> loop)
    def engine_sink(self, event: m.Event) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._on_engine_event, event)

    def _on_engine_event(self, event: m.Event) -> None:
        if self.closed:
            return
        if isinstance(event, m.TextDelta):
            self._on_text(event)
        elif isinstance(event, m.AudioDelta):
            r = self.responses.get(event.response_id)
            if r is not None and r is self.response and not r.cancel_requested:
                now = time.perf_counter()
                r.first_audio = r.first_audio or now
                r.audio_seconds += len(event.pcm) / OUTPUT_RATE
                r.playout.feed(now, len(event.pcm) / OUTPUT_RATE)
                part = r.item.content[0]
                part.audio_ms = round(1000 * r.audio_seconds)
                self.emit(ResponseAudio(r, event.pcm))
        elif isinstance(event, m.ResponseDone):
            self._on_done(event)
        elif isinstance(event, m.ToolCalls):
            self._on_calls(event)
        elif isinstance(event, m.SessionFailed):
            self.emit(SessionError("server_error", f"the session failed: {event.message}", type="server_error",
                                   fatal=True))
            self.close()

    def _on_text(self, event: m.TextDelta) -> None:
        if event.response_id in self.transcribing:
            self.transcribing[event.response_id].append(event.text)
            self.emit(Transcription(event.response_id[4:], delta=event.text))
            return
        r = self.responses.get(event.response_id)
        if r is None or r is not self.response or r.cancel_requested:
            return
        r.first_text = r.first_text or time.perf_counter()
        part = r.item.content[0]
        if r.audio:
            part.transcript = (part.transcript or "") + event.text
        else:
            part.text = (part.text or "") + event.text
        self.emit(ResponseText(r, event.text))

    def _on_done(self, event: m.ResponseDone) -> None:
        if event.response_id in self.transcribing:
            pieces = self.transcribing.pop(event.response_id)
            item_id = event.response_id[4:]
            if event.status == m.Status.FAILED:
                self.emit(Transcription(item_id, error=event.reason or "transcription failed"))
                return
            text = "".join(pieces).strip()
            item = self.item(item_id)
            for p in item.content if item is not None else ():
                if p.type == "input_audio":
                    p.transcript = text
            self.emit(Transcription(item_id, transcript=text))
            return
        r = self.responses.get(event.response_id)
        if r is None:
            return
        r.usage = event.usage
        r.status = event.status.value
        if event.status == m.Status.CANCELLED:
            r.reason = r.reason or event.reason
        elif event.status != m.Status.COMPLETED:
            r.reason = event.reason
        r.item.status = "completed" if r.status == "completed" else "incomplete"
        if self.response is r:
            self.response = None
        if not r.in_conversation:
            with contextlib.suppress(KeyError):  # out of band: not kept (KeyError: gone already)
                self.handle.delete_item(r.item.id)
            self._restore(r.id)
        if r.own_instructions:
            self._set_instructions(self.config.instructions)
        self.emit(ResponseDone(r))
        if self._next_response is not None and self.response is None:
            pending, self._next_response = self._next_response, None
            self.create_response(**pending)

    # ---- lifecycle
    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.handle.close()

