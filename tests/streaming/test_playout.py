"""The server's own view of playback and of the end of speech: underruns and gaps with a real-time client's rule
(streaming/playout.py), and time to first audio counted from where the user's speech really ended."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest

from models.defaults import INPUT_RATE, WIRE_RATE
from streaming import session as session_module
from streaming.audio import float_to_pcm16, resample
from streaming.engine import Engine, EngineConfig
from streaming.playout import Playout
from streaming.session import Session
from streaming.vad import FRAME_MS
from tests.streaming.fakes import FakeRunner

CHUNK_MS = 20  # what a client sends at a time


def test_audio_ahead_of_playback_never_underruns():
    p = Playout()
    p.feed(10.0, 0.06)  # the first chunk starts playback
    p.feed(10.05, 0.08)  # arrives before 10.06: the speaker never stops
    p.feed(10.12, 0.08)
    assert (p.underruns, p.gap_s, p.end) == (0, 0.0, pytest.approx(10.22))


def test_each_catch_up_is_one_underrun_and_its_wait_is_the_gap():
    p = Playout()
    p.feed(0.0, 0.06)
    p.feed(0.10, 0.08)  # played out at 0.06: 40 ms of silence
    p.feed(0.18, 0.08)  # exactly on time
    p.feed(0.50, 0.08)  # played out at 0.26: 240 ms
    assert p.underruns == 2
    assert p.gap_s == pytest.approx(0.28)
    p.feed(0.6, 0.0)  # nothing to play: not a chunk
    assert p.underruns == 2


@pytest.mark.parametrize("shift_ms", [0, 10, 20])  # where the speech ends inside the detector's 30 ms frame
def test_the_end_of_speech_is_counted_back_from_the_input_received(tiny, say, shift_ms, monkeypatch):
    """The detector judges 30 ms frames and the resampler holds a few ms back: the server's end of speech is the
    input received so far minus what came after the speech, which lands within one VAD frame of the last voiced
    sample (counted from the detector's own clock, it came up to ~60 ms later)."""
    speech = say("The quick brown fox jumps over the lazy dog.", WIRE_RATE)
    lead = np.zeros(WIRE_RATE // 2 + WIRE_RATE * shift_ms // 1000, np.float32)
    pcm = float_to_pcm16(np.concatenate([lead, speech, np.zeros(WIRE_RATE, np.float32)])).tobytes()
    speech_end_s = (len(lead) + len(speech)) / WIRE_RATE
    chunk = 2 * WIRE_RATE * CHUNK_MS // 1000
    clock = [0.0]  # the session's wall clock: each chunk arrives when its audio has been spoken (real time)
    monkeypatch.setattr(session_module, "time", SimpleNamespace(perf_counter=lambda: clock[0],
                                                                monotonic=time.monotonic))
    eng = Engine(tiny, EngineConfig(max_sessions=1, max_context=512), runner=FakeRunner())
    eng.start()

    async def scenario():
        session = Session(eng, lambda e: None)
        for i in range(0, len(pcm), chunk):
            clock[0] = (i + chunk) / 2 / WIRE_RATE
            session.append_audio(pcm[i:i + chunk])
            if session.response is not None:
                return session.response.speech_end
        raise AssertionError("the detector found no end of speech")

    try:
        estimated_s = asyncio.run(scenario())
    finally:
        eng.stop()
    # Measured: -6 to +14 ms from the last voiced sample (the old count: +14 to +44 ms). Bound: one VAD frame.
    assert abs(estimated_s - speech_end_s) <= FRAME_MS / 1000


def test_resampled_input_lags_what_was_received():
    """Why the count starts from the input received: the 24 -> 16 kHz resampler holds some input back."""
    from streaming.audio import AudioFormat, InputDecoder

    dec = InputDecoder(AudioFormat())
    x = resample(np.sin(np.arange(WIRE_RATE) / 7).astype(np.float32), WIRE_RATE, WIRE_RATE)
    out = sum(len(dec.decode(float_to_pcm16(x[i:i + 480]).tobytes())) for i in range(0, len(x), 480))
    assert dec.received_s == pytest.approx(1.0)
    assert out / INPUT_RATE < dec.received_s
