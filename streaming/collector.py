"""An engine sink that keeps every event it hears, for tests and benchmarks.

The engine calls a sink on its own thread; whoever waits for a response does so on another. The
collector stamps each event on arrival (perf_counter, the clock of the engine's Timings), and answers
questions per response: is it done, its audio and text, when its first audio and text arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from streaming.messages import AudioDelta, Event, ResponseDone, SessionFailed, TextDelta

__all__ = ["EventCollector", "SessionFailedError"]


class SessionFailedError(RuntimeError):
    """A session the collector listens to sent SessionFailed."""


class EventCollector:
    """`engine.open(collector)`: records events; `wait(response_id)` blocks until that response is done.

    One collector may serve several sessions (a benchmark's sweep); a SessionFailed from any of them
    ends every wait, since the events carry no session id.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._stamps: list[float] = []
        self._done: dict[str, ResponseDone] = {}
        self._failed: str | None = None

    def __call__(self, event: Event) -> None:
        now = self._clock()
        with self._cond:
            self._events.append(event)
            self._stamps.append(now)
            if isinstance(event, ResponseDone):
                self._done[event.response_id] = event
            elif isinstance(event, SessionFailed) and self._failed is None:
                self._failed = event.message
            self._cond.notify_all()

    # ---- waiting
    def wait(self, response_id: str, timeout: float = 120.0) -> ResponseDone:
        """The response's ResponseDone; SessionFailedError if a session failed first, TimeoutError if
        neither came within `timeout` seconds."""
        return self.wait_all([response_id], timeout)[0]

    def wait_all(self, response_ids: list[str], timeout: float = 120.0) -> list[ResponseDone]:
        with self._cond:
            finished = self._cond.wait_for(
                lambda: self._failed is not None or all(r in self._done for r in response_ids), timeout)
            if self._failed is not None:
                raise SessionFailedError(self._failed)
            if not finished:
                missing = [r for r in response_ids if r not in self._done]
                raise TimeoutError(f"no ResponseDone within {timeout} s for {', '.join(missing)}")
            return [self._done[r] for r in response_ids]

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 120.0) -> bool:
        """Blocks until predicate(events so far) is true (True) or `timeout` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._events), timeout)

    # ---- what was heard
    @property
    def events(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    @property
    def failed(self) -> str | None:
        with self._cond:
            return self._failed

    def done(self, response_id: str) -> ResponseDone | None:
        with self._cond:
            return self._done.get(response_id)

    def audio(self, response_id: str) -> np.ndarray:
        """The response's speech so far, float32 at the output rate (empty when none)."""
        chunks = [e.pcm for e, _ in self._of(response_id, AudioDelta)]
        return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)

    def text(self, response_id: str) -> str:
        return "".join(e.text for e, _ in self._of(response_id, TextDelta))

    def audio_times(self, response_id: str) -> list[float]:
        """Arrival stamps of the response's audio deltas, in order."""
        return [t for _, t in self._of(response_id, AudioDelta)]

    def first_audio(self, response_id: str) -> float | None:
        times = self.audio_times(response_id)
        return times[0] if times else None

    def first_text(self, response_id: str) -> float | None:
        stamps = [t for _, t in self._of(response_id, TextDelta)]
        return stamps[0] if stamps else None

    def _of(self, response_id: str, kind: type) -> list[tuple]:
        with self._cond:
            return [(e, t) for e, t in zip(self._events, self._stamps, strict=True)
                    if isinstance(e, kind) and e.response_id == response_id]
