"""The session's input buffer: appends cost amortized O(1) per sample (counted in copies, not timed), and
commits cut exactly the audio that was appended, however often the buffer grew or moved underneath."""

from __future__ import annotations

import numpy as np
import pytest

from models.defaults import INPUT_RATE, WIRE_RATE
from streaming import session as s
from streaming.audio import AudioFormat, InputDecoder, SampleBuffer, float_to_pcm16

CHUNK = INPUT_RATE // 50  # 20 ms, what a client or a WebRTC track sends at a time


def test_appends_copy_each_sample_a_bounded_number_of_times():
    buf = SampleBuffer()
    chunks = 3000  # 60 s in 20 ms pieces: a full max_input_buffer_s
    for _ in range(chunks):
        buf.append(np.ones(CHUNK, np.float32))
    total = chunks * CHUNK
    assert len(buf) == total
    # Doubling moves the samples fewer than twice on average (1 + 1/2 + 1/4 + ...); a copy of the whole buffer
    # per append (np.concatenate) would move total * chunks / 2 samples, 750 times more than this bound.
    assert buf.copied < 2 * total
    assert buf.allocations <= 1 + int(np.ceil(np.log2(total / INPUT_RATE)))
    assert total <= buf.capacity < 2 * total  # it doubled, and only as far as needed


def test_streaming_with_drops_stays_small():
    """Between turns the session keeps only the last ~1.5 s: the array neither grows nor copies much."""
    buf = SampleBuffer()
    keep = 3 * INPUT_RATE // 2
    total = 0
    for _ in range(10_000):
        buf.append(np.ones(CHUNK, np.float32))
        total += CHUNK
        if len(buf) - keep >= INPUT_RATE:  # as Session._drop_idle does: a second at a time
            buf.drop(len(buf) - keep)
    assert len(buf) < keep + INPUT_RATE
    assert buf.capacity <= 4 * (keep + INPUT_RATE)
    assert buf.copied <= total  # each move is paid for by the samples consumed since the last one


def test_contents_match_a_plain_array_across_growth_and_compaction():
    rng = np.random.default_rng(0)
    buf, reference = SampleBuffer(capacity=64), np.zeros(0, np.float32)
    for step in range(400):
        x = rng.standard_normal(int(rng.integers(0, 200))).astype(np.float32)
        buf.append(x)
        reference = np.concatenate([reference, x])
        if step % 7 == 3:  # a commit of some middle range: the clip, and nothing before its end is kept
            a, b = sorted(rng.integers(0, len(reference) + 50, 2))
            np.testing.assert_array_equal(buf.take(a, b), reference[a:b])
            reference = reference[b:]
        elif step % 5 == 1:
            n = int(rng.integers(0, len(reference) + 10))
            buf.drop(n)
            reference = reference[n:]
        np.testing.assert_array_equal(buf.view(), reference)
        assert len(buf) == len(reference)
    assert buf.allocations > 2 and buf.copied > 0  # both kinds of move happened along the way
    buf.clear()
    assert len(buf) == 0 and buf.capacity == 64 and buf.view().size == 0


def test_take_returns_a_copy():
    buf = SampleBuffer(capacity=8)
    buf.append(np.arange(6, dtype=np.float32))
    clip = buf.take(1, 4)
    buf.append(np.full(6, -1, np.float32))  # reuses the memory the clip came from
    np.testing.assert_array_equal(clip, [1, 2, 3])
    np.testing.assert_array_equal(buf.view(), [4, 5, -1, -1, -1, -1, -1, -1])
    assert buf.take(5, 2).size == 0 and len(buf) == 3  # an empty range still drops up to its end


class Handle:
    """An engine session that records what it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        return lambda *a, **k: self.calls.append((name, a, k))

    def clips(self) -> list[np.ndarray]:
        return [k["audio"] for name, _, k in self.calls if name == "add_item" and k.get("audio") is not None]


class Engine:
    def open(self, sink) -> Handle:
        self.handle = Handle()
        return self.handle


def _session(events: list, **kw) -> tuple[s.Session, Engine]:
    engine = Engine()
    return s.Session(engine, events.append, s.SessionConfig(turn_detection=None), **kw), engine


def _wire(seconds: float, seed: int) -> list[bytes]:
    """Noise as a client sends it: pcm16 at the wire rate, 20 ms per event."""
    rng = np.random.default_rng(seed)
    x = (0.3 * rng.standard_normal(int(seconds * WIRE_RATE))).astype(np.float32)
    data = float_to_pcm16(x).tobytes()
    step = 2 * WIRE_RATE // 50
    return [data[i:i + step] for i in range(0, len(data), step)]


def _decoded(chunks: list[bytes]) -> np.ndarray:
    decoder = InputDecoder(AudioFormat())
    return np.concatenate([*(decoder.decode(c) for c in chunks), decoder.flush()])


async def test_commits_cut_exactly_what_was_appended_across_growth():
    events: list = []
    session, engine = _session(events)
    first, second = _wire(3.0, 1), _wire(0.5, 2)  # 3 s: the buffer (1 s to start with) grows twice
    for chunk in first:
        session.append_audio(chunk)
    assert session._buffer.allocations > 1
    session.commit()
    for chunk in second:
        session.append_audio(chunk)  # overwrites the memory the first clip came from
    session.commit()
    clips = engine.handle.clips()
    assert len(clips) == 2
    np.testing.assert_array_equal(clips[0], _decoded(first))  # 3 s at 16 kHz: a whole number of ms
    np.testing.assert_array_equal(clips[1], _decoded(second))
    committed = [e for e in events if isinstance(e, s.AudioCommitted)]
    assert [e.item.content[0].audio_ms for e in committed] == [3000, 500]
    assert len(session._buffer) == 0


async def test_a_full_buffer_refuses_the_append_and_keeps_what_it_has():
    events: list = []
    session, _ = _session(events, max_buffer_s=1.0)
    chunks = _wire(1.2, 3)
    for chunk in chunks:
        session.append_audio(chunk)
    overflow = [e for e in events if isinstance(e, s.SessionError)]
    assert overflow and {e.code for e in overflow} == {"input_audio_buffer_overflow"}
    decoder = InputDecoder(AudioFormat())
    largest = max(len(decoder.decode(c)) for c in chunks)  # the resampler hands out uneven pieces
    assert INPUT_RATE - largest < len(session._buffer) <= INPUT_RATE  # full, less the piece that did not fit
    np.testing.assert_array_equal(session._buffer.view(), _decoded(chunks)[:len(session._buffer)])


async def test_minutes_of_streamed_input_cost_linear_copies():
    """Server VAD between turns (a WebRTC mic never stops): what the session copies grows with the input,
    not with its square."""
    events: list = []
    engine = Engine()
    session = s.Session(engine, events.append, s.SessionConfig(), max_buffer_s=5)
    quiet = float_to_pcm16(np.zeros(WIRE_RATE // 50, np.float32)).tobytes()  # 20 ms of silence
    for _ in range(180_000 // 20):  # 3 minutes in 20 ms events
        session.append_audio(quiet)
    assert events == []
    written = session.input_audio_s * INPUT_RATE
    assert written == pytest.approx(180 * INPUT_RATE, abs=INPUT_RATE // 10)  # the resampler holds back < 0.1 s
    assert session._buffer.copied <= written
    assert session._buffer.capacity <= 8 * INPUT_RATE
