"""Speculative start: a response prepared while the end of the user's turn is still being judged.

When the turn detector sees silence begin (streaming/vad.py's SpeechPaused: the last speech plus
SPECULATION_PAD_MS), the session hands the engine the clip so far as a provisional user item and a provisional
assistant response (messages.Speculate). The engine encodes, prefills and decodes ahead at the lowest priority
(streaming/scheduler.py's may_speculate), up to SPECULATION_AHEAD_S of speech, and holds every event. Then:

- Confirm (the turn ended without new speech, and was committed with exactly that clip): the held events go out at
  once, in their order, and the response carries on as any other. Its output is what the committed clip alone
  would give: the same layout, prefilled and sampled the same way, only earlier.
- Drop (speech resumed first, or the session does anything else): the speculative work is undone and the slot is
  exactly as before: the two items leave the conversation, the row goes back to the position it held (the KV
  cache past it is never read) and to the conv state snapshotted before the first speculative prefill, and the
  response's generator and hidden state are discarded (runner.StepPlan.restore).

A speculation that cannot run ahead (its slot still busy, or a history that would have to be trimmed to fit,
which could not be undone) is kept as it is and runs at the commit as a plain turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.conversation import Item
from models.defaults import FRAME_S, SPECULATION_AHEAD_S
from streaming.messages import Event, ResponseRequest
from streaming.response import Response
from streaming.runner import Start

__all__ = ["Speculation"]


@dataclass
class Speculation:
    request: ResponseRequest
    user: Item  # the provisional user item (its clip encoded in turn) and assistant item, in the conversation
    assistant: Item
    audio: np.ndarray  # 16 kHz: the clip
    live: bool  # worked on ahead of the commit (False: it waits for the commit as a plain turn)
    begun: float  # perf_counter() when the engine took it
    response: Response | None = None
    start: Start | None = None  # its response's runner start, until the runner has it
    position: int | None = None  # positions the row held before its first prefill (None: nothing prefilled yet)
    stale: bool = False  # ... and whether the conversation was stale then (the row is rebuilt either way)
    held: list[Event] = field(default_factory=list)
    first_work: float | None = None  # when its first encode, prefill or decode was planned

    @property
    def response_id(self) -> str:
        return self.request.response_id

    @property
    def parked(self) -> bool:
        """Nothing more to do before the commit: its response is over, or holds enough speech."""
        r = self.response
        return r is None or r.done or r.frames * FRAME_S >= SPECULATION_AHEAD_S

    def worked(self, now: float) -> None:
        if self.first_work is None:
            self.first_work = now

    def saved_s(self, now: float) -> float:
        """How far ahead of the commit its work got: from its first work to its first audio (or to now, the
        commit, when it has none yet). 0 when it never ran."""
        if self.first_work is None:
            return 0.0
        first_audio = self.response.timings.first_audio if self.response is not None else None
        end = now if first_audio is None else min(now, first_audio)
        return max(0.0, end - self.first_work)
