"""The per-session generation state machine (lfm2-audio-model.md 4.4).

It owns no loop and no model: each step the caller asks `want()` which modality to sample from the
backbone output, samples it (alone or in a batch with other sessions), and hands the item to
`accept_text` / `accept_audio`. The machine says what to emit to the user, what to feed back as the
next input, and when the turn is over. That keeps the exact control flow of the reference's
`generate_interleaved` / `generate_sequential` while letting an engine batch many sessions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from models.config import EOA

__all__ = ["Finish", "Generation", "Modality", "Step"]

IM_END = 7
AUDIO_START = 128
TEXT_END = 130


class Modality(enum.IntEnum):  # the reference's LFMModality values
    TEXT = 1
    AUDIO_IN = 2
    AUDIO_OUT = 3


class Finish(enum.Enum):
    STOP = "stop"  # the model ended its turn (<|im_end|>)
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Step:
    """What one accepted item means. `emit`: the reference yields it (an end-of-audio frame too; it is
    not played); `feed`: it becomes the next input (every emitted item except a final <|im_end|>)."""

    emit: bool
    feed: bool


@dataclass
class Generation:
    interleaved: bool
    max_new_tokens: int
    n_text: int = 6
    n_audio: int = 12
    mode: Modality = Modality.TEXT
    left: int = 0
    text_done: bool = False
    steps: int = 0
    finish: Finish | None = None
    # Every item fed back, in order: (Modality.TEXT, token) or (Modality.AUDIO_OUT, codes tuple).
    items: list[tuple[Modality, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.left = self.n_text

    @classmethod
    def interleaved_turn(cls, max_new_tokens: int, n_text: int = 6, n_audio: int = 12) -> Generation:
        return cls(True, max_new_tokens, n_text, n_audio)

    @classmethod
    def sequential_turn(cls, max_new_tokens: int) -> Generation:
        return cls(False, max_new_tokens)

    @property
    def done(self) -> bool:
        return self.finish is not None

    def want(self) -> Modality:
        """The modality to sample at this step. Counts the step (the reference's loop iteration)."""
        assert not self.done
        self.steps += 1
        if self.interleaved:
            self.left -= 1
        return self.mode

    def accept_text(self, token: int) -> Step:
        assert self.mode == Modality.TEXT and not self.done
        if token == IM_END:
            # Interleaved: stop without yielding. Sequential: yielded, then stop. Never fed back.
            self.finish = Finish.STOP
            return Step(emit=not self.interleaved, feed=False)
        if self.interleaved:
            if token == TEXT_END:
                self.text_done = True
            if self.left == 0 or self.text_done:
                self.mode, self.left = Modality.AUDIO_OUT, self.n_audio
        elif token == AUDIO_START:
            self.mode = Modality.AUDIO_OUT
        self.items.append((Modality.TEXT, token))
        self._count()
        return Step(emit=True, feed=True)

    def accept_audio(self, codes: tuple[int, ...]) -> Step:
        """codes: the sampled frame, already all-EOA when codebook 0 was EOA (Depthformer.frame does it)."""
        assert self.mode == Modality.AUDIO_OUT and not self.done
        if self.interleaved and self.left == 0 and not self.text_done:
            self.mode, self.left = Modality.TEXT, self.n_text
        if codes[0] == EOA:
            self.mode = Modality.TEXT
        self.items.append((Modality.AUDIO_OUT, tuple(codes)))
        self._count()
        return Step(emit=True, feed=True)

    def cancel(self) -> None:
        if not self.done:
            self.finish = Finish.CANCELLED

    def _count(self) -> None:
        if self.steps >= self.max_new_tokens:
            self.finish = Finish.LENGTH
