"""The simulated speaker: plays a reply in real time as it arrives and counts the times it ran dry.

Playback starts when the first audio arrives (plus `latency_s`, a receiver's jitter buffer: 0 on the WebSocket)
and then advances with the wall clock. Whenever the clock catches up
with the audio received so far, that is one underrun, and the wait until more audio arrives is its gap.
"""

from __future__ import annotations

__all__ = ["Player"]


class Player:
    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.start: float | None = None  # wall time playback began (the first audio's arrival)
        self.end: float | None = None  # wall time the audio received so far will have played out
        self.received_s = 0.0
        self.underruns = 0
        self.gaps: list[tuple[float, float]] = []  # (ran dry, audio again) wall times
        self.stopped_at: float | None = None  # barge-in: the user cut the reply off here

    def feed(self, now: float, seconds: float) -> None:
        """`seconds` of audio arrived at wall time `now`."""
        if self.stopped_at is not None or seconds <= 0:
            return
        if self.start is None:
            self.start = self.end = now + self.latency_s
        elif now > self.end:  # the speaker ran dry and waited for this chunk
            self.underruns += 1
            self.gaps.append((self.end, now))
            self.end = now
        self.end += seconds
        self.received_s += seconds

    @property
    def gap_s(self) -> float:
        return sum(b - a for a, b in self.gaps)

    def played_s(self, now: float) -> float:
        """How much audio has come out of the speaker by `now` (gaps are silence, not audio)."""
        if self.start is None:
            return 0.0
        if self.stopped_at is not None:
            now = min(now, self.stopped_at)
        silent = sum(max(0.0, min(b, now) - a) for a, b in self.gaps)
        return max(0.0, min(self.received_s, now - self.start - silent))

    def stop(self, now: float) -> float:
        """Cut playback off (the user spoke over it); returns the seconds played."""
        played = self.played_s(now)
        if self.stopped_at is None:
            self.stopped_at = now
        return played

    def done_at(self) -> float | None:
        """Wall time playback ends given what has arrived (None before the first audio)."""
        if self.stopped_at is not None:
            return self.stopped_at
        return self.end
