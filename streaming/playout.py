"""What a client playing a response in real time hears: playback starts with the first audio sent, then runs on
the wall clock. Each time it catches up with the audio sent so far is one underrun, and the wait until more audio
goes out is its gap. The server's underrun and gap metrics count this, at the moment each chunk leaves the
session (loadtests/player.py is the client's side of the same rule, counted at arrival)."""

from __future__ import annotations

__all__ = ["Playout"]


class Playout:
    def __init__(self) -> None:
        self.end: float | None = None  # wall time the audio sent so far will have played out
        self.underruns = 0
        self.gap_s = 0.0

    def feed(self, now: float, seconds: float) -> None:
        """`seconds` of audio sent at wall time `now`."""
        if seconds <= 0:
            return
        if self.end is None:
            self.end = now
        elif now > self.end:  # the client's speaker ran dry and waited for this chunk
            self.underruns += 1
            self.gap_s += now - self.end
            self.end = now
        self.end += seconds
