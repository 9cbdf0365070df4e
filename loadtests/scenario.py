"""What one load run does (users, turns, speech, mixes, limits) and what the capacity sweep demands.

The defaults are the scenario issue #9 measured: the tiny default checkpoint, `serve --max-sessions N`, N users
on one machine, server VAD (500 ms of silence), answers capped at 80 tokens (about 4 s), three turns of a 3.5 s
espeak-ng clip each, starts staggered over 2 s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["MAX_USERS", "WIRE_RATE", "Scenario", "Thresholds"]

# The protocol's `audio/pcm`: 24 kHz, 16-bit, mono (docs/api.md). A fact of the wire, not a server default.
WIRE_RATE = 24_000
MAX_USERS = 256  # the most simulated users one run may start: a bound, so a typo cannot fork-bomb the machine
CLIP_TEXT = "the quick brown fox jumps over the lazy dog and runs far away"  # no commas: no pauses VAD could end on


@dataclass(frozen=True)
class Scenario:
    users: int = 1
    turns: int = 3  # per user
    transport: str = "websocket"  # or "webrtc" (aiortc)
    clip_text: str = CLIP_TEXT
    clip_s: float = 3.5  # espeak-ng's speed is set so the voiced clip lasts this long
    chunk_ms: int = 20  # one input_audio_buffer.append per mic chunk, paced in real time
    silence_ms: int = 500  # server_vad silence_duration_ms
    turn_detection: str = "server_vad"  # or "semantic_vad" (the end-of-turn model decides, by eagerness)
    eagerness: str = "auto"  # semantic_vad only
    speculative_start: bool | None = None  # session.lfm_audio.speculative_start; None: the server's default
    max_output_tokens: int = 80
    ramp_s: float = 2.0  # user i starts at i * ramp_s / users
    pause_s: float = 0.0  # after the reply has played out, before speaking again
    duration_s: float | None = None  # when set, no turn starts after this many seconds (turns stays the cap)
    barge_in: float = 0.0  # fraction of turns (after the first) spoken over the previous reply
    barge_in_after_s: float = 1.0  # how much of the reply plays before such a turn starts
    push_to_talk: float = 0.0  # fraction of users with turn_detection null: commit + response.create themselves
    seed: int = 0  # picks which users push to talk and which turns barge in
    turn_timeout_s: float = 30.0  # the longest any one wait inside a turn may take
    deadline_s: float | None = None  # the whole run; default: derived from the scenario (see deadline())
    extra: dict = field(default_factory=dict)  # passed to session.update's `session` verbatim (merged last)

    def __post_init__(self) -> None:
        if not 1 <= self.users <= MAX_USERS:
            raise ValueError(f"users must be 1..{MAX_USERS}, got {self.users}")
        if self.turns < 1:
            raise ValueError(f"turns must be at least 1, got {self.turns}")
        if self.turn_detection not in ("server_vad", "semantic_vad"):
            raise ValueError(f"turn_detection must be server_vad or semantic_vad, got {self.turn_detection!r}")
        if self.transport not in ("websocket", "webrtc"):
            raise ValueError(f"transport must be websocket or webrtc, got {self.transport!r}")
        for name in ("barge_in", "push_to_talk"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a fraction 0..1, got {getattr(self, name)}")
        if self.chunk_ms <= 0 or self.clip_s <= 0 or self.turn_timeout_s <= 0:
            raise ValueError("chunk_ms, clip_s and turn_timeout_s must be positive")

    def deadline(self) -> float:
        """A hard bound on the run: the ramp plus every turn taking its longest allowed wait, capped at 30 min."""
        if self.deadline_s is not None:
            return self.deadline_s
        per_turn = self.clip_s + 2 * self.turn_timeout_s + self.pause_s
        return min(1800.0, self.ramp_s + 15.0 + self.turns * per_turn)

    def with_users(self, users: int) -> Scenario:
        return dataclasses.replace(self, users=users)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """What a run must hold for the sweep to call N served: the issue's two, plus nothing failed."""

    max_underruns: int = 0
    p95_commit_to_audio_s: float = 0.100
    max_errors: int = 0
    max_rejections: int = 0

    def check(self, summary: dict) -> list[str]:
        """The reasons a run's summary fails (empty: it holds)."""
        why = []
        if summary["underruns"] > self.max_underruns:
            why.append(f"{summary['underruns']} underruns > {self.max_underruns}")
        p95 = summary["ttfa_commit_s"]["p95"]
        if p95 is None or p95 > self.p95_commit_to_audio_s:
            shown = "none" if p95 is None else f"{p95 * 1000:.0f} ms"
            why.append(f"p95 commit -> first audio {shown} > {self.p95_commit_to_audio_s * 1000:.0f} ms")
        if summary["errors"] > self.max_errors:
            why.append(f"{summary['errors']} errors")
        if summary["rejections"] > self.max_rejections:
            why.append(f"{summary['rejections']} rejections")
        if summary["turns_completed"] < summary["turns_expected"]:
            why.append(f"{summary['turns_completed']}/{summary['turns_expected']} turns completed")
        return why

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
