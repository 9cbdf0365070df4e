"""A scripted runner for tests of the engine loop: no model, every plan recorded, failures on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.conversation import Segment
from models.defaults import FRAME_SAMPLES
from models.generation import Modality
from streaming.runner import StepPlan, StepResult

TEXT_TOKEN = 300  # a plain byte token of the tiny tokenizer: decodes to text
FRAME = (1,) * 8


@dataclass
class FakeRunner:
    decoder_name: str = "fake"
    plans: list[StepPlan] = field(default_factory=list)
    fail_prefill: set[int] = field(default_factory=set)  # slots whose prefill fails
    fail_decode: set[int] = field(default_factory=set)  # slots whose decode fails (alone, as if its own)
    crash_at: int | None = None  # the step (0-based) at which step() itself raises: an engine bug
    on_step: Callable[[int, StepPlan], None] | None = None  # called before each step runs (a client acting)
    script: dict[int, list] = field(default_factory=dict)  # slot -> values to sample, in order (then defaults)

    def step(self, plan: StepPlan) -> StepResult:
        n = len(self.plans)
        self.plans.append(plan)
        if self.on_step is not None:
            self.on_step(n, plan)
        if self.crash_at == n:
            raise RuntimeError("runner crashed")
        out = StepResult()
        for slot, audio in plan.encode:
            out.encoded[slot] = Segment(Modality.AUDIO_IN, torch.zeros(max(1, len(audio) // 1280), 4))
        for slot in plan.flush:
            out.tails[slot] = np.zeros(FRAME_SAMPLES // 2, np.float32)
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
            queued = self.script.get(d.slot)
            value = queued.pop(0) if queued else TEXT_TOKEN if d.want == Modality.TEXT else FRAME
            out.items[d.slot] = value
            if d.speak and d.want == Modality.AUDIO_OUT:
                out.pcm[d.slot] = np.zeros(FRAME_SAMPLES, np.float32)
        if plan.decode:
            out.decode_seconds = 0.001
        return out

    def kinds(self) -> list[str]:
        """Each step's work, in a word: encode / prefill / decode / idle."""
        return ["encode" if p.encode else "prefill" if p.prefill else "decode" if p.decode else "idle"
                for p in self.plans]
