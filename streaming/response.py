"""One response on a slot, from its request to its ResponseDone: what each sampled item means (emit, feed,
count), the events it makes, how it ends. The engine thread calls it; it touches no tensor.

Its audio frames are counted here, once (`frames`): usage, event frame indices and the client's lead read
that count. (Underruns are counted where the audio leaves the session, as a client would: streaming/playout.py.)
"""

from __future__ import annotations

import numpy as np

from models.config import AudioModelConfig
from models.conversation import Item
from models.defaults import FRAME_S
from models.generation import Finish, Generation, Modality
from models.sampling import SamplingParams
from models.speech import is_speech
from models.tokenizer import TextStream, TextTokenizer
from streaming.messages import (
    AudioDelta,
    Event,
    ResponseDone,
    ResponseRequest,
    Status,
    TextDelta,
    Timings,
    ToolCalls,
    Usage,
)
from streaming.runner import Decode, Start, Value

__all__ = ["Response"]


class Response:
    def __init__(self, request: ResponseRequest, item: Item, cfg: AudioModelConfig, tokenizer: TextTokenizer,
                 now: float) -> None:
        self.request = request
        self.item = item  # the open assistant item in the conversation (edit it under the conversation's lock)
        self.gen = (Generation.interleaved_turn(request.max_tokens, cfg.interleaved_n_text, cfg.interleaved_n_audio)
                    if request.mode.interleaved else Generation.sequential_turn(request.max_tokens))
        self.text = TextStream(tokenizer)
        self.im_end = tokenizer.special.im_end
        self.tokenizer = tokenizer
        self.call_ids: list[int] | None = None  # inside <|tool_call_start|> ... <|tool_call_end|>: its ids
        self.usage = Usage()
        self.timings = Timings(requested=now)
        self.feed: tuple[Modality, Value] | None = None  # the item to feed at the next step
        self.prefilled = False
        self.frames = 0  # speech frames generated (the one count)
        self.finishing = False  # generation is over; its speech stream still has to be flushed
        self.cancel_reason: str | None = None  # set by a cancel: finished at the next iteration
        self.length_reason = "max_output_tokens"  # or "max_context"
        self.transcript: list[str] = []

    @property
    def done(self) -> bool:
        return self.gen.done

    def start(self, slot: int) -> Start:
        return Start(slot, self.request.seed, self.request.audio)

    def decode(self, slot: int, position: int) -> Decode:
        """This step's work for the slot (counts the step)."""
        r = self.request
        return Decode(slot, position, self.feed, self.gen.want(), SamplingParams(r.text_temperature, r.text_top_k),
                      SamplingParams(r.audio_temperature, r.audio_top_k), r.audio)

    def lead_s(self, now: float) -> float:
        """Audio produced minus audio the client has had time to play."""
        if self.timings.first_audio is None:
            return 0.0
        return self.frames * FRAME_S - (now - self.timings.first_audio)

    @property
    def awaiting_audio(self) -> bool:
        """A spoken response that has produced no audio yet (the scheduler puts its first audio first)."""
        return self.request.audio and self.timings.first_audio is None and not self.finishing

    def prefill_done(self, now: float) -> None:
        self.prefilled = True
        self.timings.prefill_done = now

    def accept(self, kind: Modality, value: Value, now: float, *, context_full: bool) -> list[Event]:
        """A sampled item. The state machine says whether it is emitted and fed back (then it joins the
        conversation item: the caller holds the conversation's lock)."""
        step = self.gen.accept_text(value) if kind == Modality.TEXT else self.gen.accept_audio(value)
        self.feed = (kind, value) if step.feed else None
        if step.feed:
            self.item.append_generated(kind, value)
        events: list[Event] = []
        if kind == Modality.TEXT:
            if step.emit and value != self.im_end:
                self.usage.output_text_tokens += 1
                self.timings.first_text = self.timings.first_text or now
                events.extend(self._text(value))
        elif is_speech(value):
            self.frames += 1
            if not self.request.audio:  # no speech to decode: its first frame is the first audio there is
                self.timings.first_audio = self.timings.first_audio or now
        if context_full and not self.gen.done:
            self.gen.finish, self.length_reason = Finish.LENGTH, "max_context"
        return events

    def _text(self, token: int) -> list[Event]:
        """A text token: a delta of what the model says, or part of a function call (not said)."""
        calls = self.tokenizer.tool_call
        if calls is not None and token == calls[0]:
            self.call_ids = []
            return []
        if self.call_ids is not None:
            if token != calls[1]:
                self.call_ids.append(token)
                return []
            text, self.call_ids = self.tokenizer.decode(self.call_ids), None
            return [ToolCalls(self.request.response_id, text)]
        delta = self.text.push(token)
        if not delta:
            return []
        self.transcript.append(delta)
        return [TextDelta(self.request.response_id, delta)]

    def audio(self, pcm: np.ndarray, now: float) -> AudioDelta:
        """The speech of the frame accepted last."""
        if self.timings.first_audio is None:
            self.timings.first_audio = now
        return AudioDelta(self.request.response_id, pcm, self.frames - 1)

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason

    @property
    def needs_flush(self) -> bool:
        """Its speech stream holds a tail to play."""
        return self.prefilled and self.request.audio and self.frames > 0

    def finish(self, tail: np.ndarray | None, now: float) -> list[Event]:
        """The last events. The caller holds the conversation's lock: the item closes (the next prefill feeds
        any item accepted last but not fed, then "<|im_end|>\\n")."""
        self.item.closed = True
        events: list[Event] = []
        text = self.text.flush()
        if text:
            self.transcript.append(text)
            events.append(TextDelta(self.request.response_id, text))
        if tail is not None and tail.size:
            events.append(AudioDelta(self.request.response_id, tail, self.frames))
        self.timings.done = now
        self.usage.output_audio_frames = self.frames
        status, reason = {
            Finish.STOP: (Status.COMPLETED, None),
            Finish.LENGTH: (Status.INCOMPLETE, self.length_reason),
        }.get(self.gen.finish, (Status.CANCELLED, self.cancel_reason or "client_cancelled"))
        r = self.request
        events.append(ResponseDone(r.response_id, r.item_id, status, reason, self.usage, self.timings,
                                   "".join(self.transcript), tuple(v for _, v in self.gen.items)))
        return events
