"""One turn as the client saw it: wall times of what it sent and received, and the figures derived from them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from loadtests.player import Player

__all__ = ["METRICS", "Turn"]

# The per-turn figures, in the order the report shows them: name -> what it measures.
METRICS = {
    "vad_delay_s": "end of speech -> speech_stopped",
    "ttfa_speech_end_s": "end of speech -> first audio",
    "ttfa_commit_s": "committed -> first audio",
    "ttft_s": "committed -> first text",
    "rtf": "response.created -> response.done over the audio's duration",
    "cancel_s": "barge-in: speech_started -> the cut reply's response.done",
}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass
class Turn:
    user: int
    index: int
    push_to_talk: bool
    barge_in: bool  # spoken over the previous reply
    speech_begin: float | None = None  # wall time the first sample of the clip was sent
    speech_end: float | None = None  # wall time the last voiced sample was sent
    speech_started: float | None = None
    speech_stopped: float | None = None
    committed: float | None = None
    response_created: float | None = None
    first_audio: float | None = None
    first_text: float | None = None
    response_done: float | None = None
    response_id: str | None = None
    item_id: str | None = None  # the assistant's item (for a truncate)
    status: str | None = None
    reason: str | None = None
    interrupted: bool = False  # the next turn's speech cut this reply off
    played_s: float | None = None  # how much played before the cut
    cut_at: float | None = None  # wall time of the speech_started that cut it
    error: str | None = None
    player: Player = field(default_factory=Player)
    got_committed: asyncio.Event = field(default_factory=asyncio.Event)
    got_done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def completed(self) -> bool:
        return self.response_done is not None and self.error is None

    def figures(self) -> dict:
        audio_s = self.player.received_s
        span = _minus(self.response_done, self.response_created)
        return {
            "vad_delay_s": _minus(self.speech_stopped, self.speech_end),
            "ttfa_speech_end_s": _minus(self.first_audio, self.speech_end),
            "ttfa_commit_s": _minus(self.first_audio, self.committed),
            "ttft_s": _minus(self.first_text, self.committed),
            # A cancelled reply stopped early: its generation time says nothing about speed.
            "rtf": span / audio_s if span is not None and audio_s > 0 and self.status != "cancelled" else None,
            # Only a reply still being generated at the cut gets cancelled; one already done just stops playing.
            "cancel_s": _minus(self.response_done, self.cut_at) if self.status == "cancelled" else None,
        }

    def to_json(self, origin: float) -> dict:
        """Times relative to `origin` (the run's start), figures in seconds."""
        times = {k: None if v is None else round(v - origin, 4) for k, v in (
            ("speech_begin", self.speech_begin), ("speech_end", self.speech_end),
            ("speech_started", self.speech_started), ("speech_stopped", self.speech_stopped),
            ("committed", self.committed), ("response_created", self.response_created),
            ("first_audio", self.first_audio), ("first_text", self.first_text),
            ("response_done", self.response_done))}
        figures = {k: None if v is None else round(v, 4) for k, v in self.figures().items()}
        return {"user": self.user, "turn": self.index, "push_to_talk": self.push_to_talk, "barge_in": self.barge_in,
                "status": self.status, "reason": self.reason, "interrupted": self.interrupted,
                "error": self.error, "completed": self.completed, **figures,
                "audio_s": round(self.player.received_s, 4), "played_s": None if self.played_s is None
                else round(self.played_s, 4), "underruns": self.player.underruns,
                "gap_s": round(self.player.gap_s, 4), "times": times}
