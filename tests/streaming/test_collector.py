"""EventCollector on hand-made events: no model, no engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streaming.collector import EventCollector, SessionFailedError
from streaming.messages import AudioDelta, ItemAdded, ResponseDone, SessionFailed, Status, TextDelta, Timings, Usage


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _done(rid: str, frames: int = 0) -> ResponseDone:
    return ResponseDone(rid, f"item_{rid}", Status.COMPLETED, None, Usage(output_audio_frames=frames), Timings(), "")


def _pcm(value: float, n: int = 4) -> np.ndarray:
    return np.full(n, value, np.float32)


def test_concatenates_one_responses_audio_and_text_in_order():
    clock = FakeClock()
    c = EventCollector(clock)
    for t, event in enumerate([
        ItemAdded("u0", 10), TextDelta("r1", "Hel"), AudioDelta("r1", _pcm(1), 0), AudioDelta("r2", _pcm(9), 0),
        TextDelta("r1", "lo"), AudioDelta("r1", _pcm(2, 3), 1), TextDelta("r2", "other"),
    ]):
        clock.now = float(t)
        c(event)
    np.testing.assert_array_equal(c.audio("r1"), [1, 1, 1, 1, 2, 2, 2])
    assert c.audio("r1").dtype == np.float32
    assert c.text("r1") == "Hello"
    assert c.text("r2") == "other"
    assert c.audio_times("r1") == [2.0, 5.0]
    assert c.first_audio("r1") == 2.0
    assert c.first_text("r1") == 1.0
    assert c.first_audio("r2") == 3.0
    assert len(c.events) == 7


def test_a_response_without_audio_or_text_has_none():
    c = EventCollector()
    c(_done("r1"))
    assert c.audio("r1").shape == (0,)
    assert c.text("r1") == ""
    assert c.first_audio("r1") is None
    assert c.first_text("r1") is None


def test_wait_returns_the_done_event_sent_from_another_thread():
    c = EventCollector()
    sender = threading.Timer(0.05, lambda: (c(AudioDelta("r1", _pcm(1), 0)), c(_done("r1", frames=1))))
    sender.start()
    done = c.wait("r1", timeout=10)  # generous: only a stalled machine takes longer than 50 ms
    sender.join()
    assert done.usage.output_audio_frames == 1
    assert c.done("r1") is done
    assert c.done("r2") is None


def test_wait_all_needs_every_response():
    c = EventCollector()
    c(_done("a"))
    with pytest.raises(TimeoutError, match="b"):
        c.wait_all(["a", "b"], timeout=0.05)
    c(_done("b"))
    assert [d.response_id for d in c.wait_all(["a", "b"], timeout=0.05)] == ["a", "b"]


def test_a_failed_session_ends_the_wait_with_its_message():
    c = EventCollector()
    threading.Timer(0.05, lambda: c(SessionFailed("engine stopped"))).start()
    with pytest.raises(SessionFailedError, match="engine stopped"):
        c.wait("r1", timeout=10)
    c(SessionFailed("a later one"))
    assert c.failed == "engine stopped"
    with pytest.raises(SessionFailedError):  # even a response that is done: the session is gone
        c(_done("r1"))
        c.wait("r1", timeout=0.05)


def test_wait_for_a_predicate_over_the_events():
    c = EventCollector()
    assert not c.wait_for(lambda events: len(events) >= 2, timeout=0.05)
    threading.Timer(0.05, lambda: [c(AudioDelta("r1", _pcm(1), i)) for i in range(3)]).start()
    assert c.wait_for(lambda events: sum(isinstance(e, AudioDelta) for e in events) >= 3, timeout=10)


def test_concurrent_senders_lose_nothing():
    c = EventCollector()

    def send(rid: str) -> None:
        for i in range(500):
            c(AudioDelta(rid, _pcm(i, 1), i))
        c(_done(rid))

    threads = [threading.Thread(target=send, args=(f"r{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    c.wait_all([f"r{n}" for n in range(4)], timeout=30)
    for t in threads:
        t.join()
    for n in range(4):
        np.testing.assert_array_equal(c.audio(f"r{n}"), np.arange(500, dtype=np.float32))
