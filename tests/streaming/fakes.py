"""A scripted runner for tests of the engine loop and of the server on top of it: no model, every plan
recorded, failures on demand, and (with a `Reply`) responses that say a chosen text and speech."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.config import EOA
from models.conversation import Segment
from models.defaults import FRAME_SAMPLES, OUTPUT_RATE
from models.generation import AUDIO_START, IM_END, TEXT_END, Modality
from models.speech import is_speech
from streaming.runner import Decode, Start, StepPlan, StepResult

TEXT_TOKEN = 300  # a plain byte token of the tiny tokenizer: decodes to text
FRAME = (1,) * 8
END_OF_AUDIO = (EOA,) * 8
TAIL_SAMPLES = FRAME_SAMPLES // 2  # what a flushed speech stream still holds


def frame_pcm(k: int) -> np.ndarray:
    """The speech of a response's k-th frame: a 440 Hz tone, continuous across frames (deterministic, not
    silence, so that a test can compare every sample it receives)."""
    t = (k * FRAME_SAMPLES + np.arange(FRAME_SAMPLES)) / OUTPUT_RATE
    return (0.25 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def tail_pcm() -> np.ndarray:
    return np.zeros(TAIL_SAMPLES, np.float32)


def reply_pcm(frames: int) -> np.ndarray:
    """Everything a response that spoke `frames` frames plays, its flushed tail included."""
    return np.concatenate([*(frame_pcm(k) for k in range(frames)), tail_pcm()])


@dataclass(frozen=True)
class Reply:
    """What every response says, whatever it was asked: its `text` (token ids), then, if it speaks, `frames`
    frames of speech (None: speech that never ends), then the end of its turn. In the model's layouts:
    interleaved, text and speech alternate and <|text_end|> closes the text; sequential (TTS), the speech
    follows <|audio_start|>; a response that does not speak ends after its text."""

    text: tuple[int, ...]
    frames: int | None = 24


class _Saying:
    """One response's place in its Reply."""

    def __init__(self, reply: Reply, speak: bool) -> None:
        self.reply = reply
        self.tokens = list(reply.text)
        self.text_ended = False
        self.frames = 0  # speech frames given so far
        self.audio_done = not speak

    def text(self) -> int:
        if self.tokens:
            return self.tokens.pop(0)
        if self.audio_done:
            return IM_END
        if not self.text_ended:
            self.text_ended = True
            return TEXT_END
        return AUDIO_START  # sequential: the speech starts after <|audio_start|>

    def frame(self) -> tuple[int, ...]:
        if self.reply.frames is None or self.frames < self.reply.frames:
            self.frames += 1
            return FRAME
        self.audio_done = True
        return END_OF_AUDIO


@dataclass
class FakeRunner:
    decoder_name: str = "fake"
    plans: list[StepPlan] = field(default_factory=list)
    fail_prefill: set[int] = field(default_factory=set)  # slots whose prefill fails
    fail_decode: set[int] = field(default_factory=set)  # slots whose decode fails (alone, as if its own)
    crash_at: int | None = None  # the step (0-based) at which step() itself raises: an engine bug
    on_step: Callable[[int, StepPlan], None] | None = None  # called before each step runs (a client acting)
    script: dict[int, list] = field(default_factory=dict)  # slot -> values to sample, in order (then defaults)
    reply: Reply | None = None  # what each response says (else TEXT_TOKEN and FRAME forever)
    step_s: float = 0.0  # a decode step takes this long (a response that lasts until it is cancelled)
    keep_plans: bool = True  # False: a long-running server's runner keeps no history
    _saying: dict[int, _Saying] = field(default_factory=dict)  # slot -> its response's place in the reply
    _spoken: dict[int, int] = field(default_factory=dict)  # slot -> speech frames of its response so far

    def step(self, plan: StepPlan) -> StepResult:
        n = len(self.plans)
        if self.keep_plans:
            self.plans.append(plan)
        if self.on_step is not None:
            self.on_step(n, plan)
        if self.crash_at == n:
            raise RuntimeError("runner crashed")
        out = StepResult()
        for slot, audio in plan.encode:
            out.encoded[slot] = Segment(Modality.AUDIO_IN, torch.zeros(max(1, len(audio) // 1280), 4))
        for slot in plan.flush:
            out.tails[slot] = tail_pcm()
        for s in plan.start:
            self._begin(s)
        for p in plan.prefill:
            if p.slot in self.fail_prefill:
                out.failed[p.slot] = "prefill failed: scripted"
            out.prefill_seconds.append(0.0)
        for d in plan.decode:
            if d.slot in out.failed:
                continue
            if d.slot in self.fail_decode:
                out.failed[d.slot] = "decode step failed: scripted"
                continue
            out.items[d.slot] = value = self._sample(d)
            if d.speak and d.want == Modality.AUDIO_OUT and is_speech(value):
                k = self._spoken[d.slot] = self._spoken.get(d.slot, 0) + 1
                out.pcm[d.slot] = frame_pcm(k - 1)
        if plan.decode:
            if self.step_s:
                time.sleep(self.step_s)
            out.decode_seconds = max(self.step_s, 0.001)
        return out

    def _begin(self, s: Start) -> None:
        self._spoken[s.slot] = 0
        if self.reply is not None:
            self._saying[s.slot] = _Saying(self.reply, s.speak)

    def _sample(self, d: Decode) -> int | tuple[int, ...]:
        queued = self.script.get(d.slot)
        if queued:
            return queued.pop(0)
        saying = self._saying.get(d.slot)
        if saying is None:
            return TEXT_TOKEN if d.want == Modality.TEXT else FRAME
        return saying.text() if d.want == Modality.TEXT else saying.frame()

    def kinds(self) -> list[str]:
        """Each step's work, in a word: encode / prefill / decode / idle."""
        return ["encode" if p.encode else "prefill" if p.prefill else "decode" if p.decode else "idle"
                for p in self.plans]
