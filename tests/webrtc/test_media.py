"""WebRTC media without a network: the paced outgoing track and its output_audio_buffer.* events, the
inbound reader, and the session input path that a WebRTC mic (always streaming) relies on."""

from __future__ import annotations

import fractions
import time
from dataclasses import replace

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from server.webrtc_tracks import FRAME, RATE, SpeechTrack, read_audio, to_mono
from streaming import session as s
from streaming.audio import OPUS_PCM, AudioFormat, InputDecoder, float_to_pcm16
from streaming.vad import VadConfig


def tone(seconds: float, rate: int, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.argmax(spectrum) * rate / len(x))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, type_: str, **fields: object) -> None:
        self.events.append((type_.removeprefix("output_audio_buffer."), fields["response_id"]))


def samples(frame: AudioFrame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1).astype(np.float32) / 32768


async def test_paced_frames_of_silence():
    rec = Recorder()
    track = SpeechTrack(rec)
    t0 = time.monotonic()
    frames = [await track.recv() for _ in range(11)]
    elapsed = time.monotonic() - t0
    assert 0.195 <= elapsed < 0.6  # 10 intervals of 20 ms, slept, not sent as fast as asked
    assert [f.pts for f in frames] == [i * FRAME for i in range(11)]
    for f in frames:
        assert (f.sample_rate, f.samples, f.time_base) == (RATE, FRAME, fractions.Fraction(1, RATE))
        assert (f.format.name, f.layout.name) == ("s16", "mono")
        assert not samples(f).any()
    assert rec.events == []
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_a_response_plays_then_stops_when_drained():
    rec = Recorder()
    track = SpeechTrack(rec)
    x = tone(0.1, 24_000)  # 2400 samples at 24 kHz: 4800 at 48 kHz, 5 frames
    track.start("r1")
    track.play(x[:1000])
    track.play(x[1000:])
    out = [samples(await track.recv())]
    assert rec.events == [("started", "r1")] and np.abs(out[0]).max() > 0.1
    track.end("r1")  # the response is done; its audio is still queued
    while rec.events[-1] != ("stopped", "r1"):
        assert rec.events == [("started", "r1")]  # not stopped while anything is left
        out.append(samples(await track.recv()))
    heard = np.concatenate(out)
    assert not out[-1].any()  # stopped is reported once the last audio frame went out
    voiced = [i for i, f in enumerate(out) if np.abs(f).max() > 0.01]
    assert voiced == list(range(5))
    rms = np.sqrt(np.mean(heard[: 5 * FRAME] ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.05 and abs(peak_hz(heard[: 5 * FRAME], RATE) - 440) < 15
    assert not samples(await track.recv()).any() and len(rec.events) == 2


async def test_clear_drops_everything_queued_at_once():
    rec = Recorder()
    track = SpeechTrack(rec)
    track.clear()
    assert rec.events == []  # nothing playing, nothing to report
    track.start("r1")
    track.play(tone(1.0, 24_000))
    assert np.abs(samples(await track.recv())).max() > 0.1
    track.clear()
    assert rec.events == [("started", "r1"), ("cleared", "r1")]
    track.play(tone(0.5, 24_000))  # the rest of the cancelled response: dropped
    track.end("r1")
    for _ in range(5):
        assert not samples(await track.recv()).any()
    assert rec.events == [("started", "r1"), ("cleared", "r1")]  # never "stopped" after "cleared"
    track.start("r2")  # the next response plays normally
    track.play(tone(0.04, 24_000))
    assert np.abs(samples(await track.recv())).max() > 0.1
    assert rec.events[-1] == ("started", "r2")


async def test_clear_reports_a_response_queued_but_not_yet_heard():
    rec = Recorder()
    track = SpeechTrack(rec)
    track.start("r1")
    track.play(tone(0.2, 24_000))
    track.end("r1")
    track.clear()
    assert rec.events == [("cleared", "r1")]
    assert not samples(await track.recv()).any()


async def test_back_to_back_responses():
    rec = Recorder()
    track = SpeechTrack(rec)
    track.start("r1")
    track.play(tone(0.04, 24_000))
    track.start("r2")  # starting the next one ends the previous one
    track.play(tone(0.04, 24_000, hz=880))
    track.end("r2")
    for _ in range(8):
        await track.recv()
    assert rec.events == [("started", "r1"), ("stopped", "r1"), ("started", "r2"), ("stopped", "r2")]


def test_to_mono_mixes_any_layout():
    left, right = tone(0.02, RATE), tone(0.02, RATE, hz=1000, amp=0.25)
    packed = np.stack([left, right], axis=1).reshape(1, -1)  # interleaved L R L R
    frame = AudioFrame.from_ndarray(np.rint(packed * 32767).astype(np.int16), format="s16", layout="stereo")
    np.testing.assert_allclose(to_mono(frame), (left + right) / 2, atol=1e-4)
    planar = AudioFrame.from_ndarray(np.stack([left, right]), format="fltp", layout="stereo")
    np.testing.assert_allclose(to_mono(planar), (left + right) / 2, atol=1e-6)
    mono = AudioFrame.from_ndarray(np.rint(left * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    np.testing.assert_allclose(to_mono(mono), left, atol=1e-4)


class FakeTrack:
    """What aiortc's remote track gives: 48 kHz stereo s16 frames of 20 ms, then MediaStreamError."""

    def __init__(self, x: np.ndarray) -> None:
        pcm = np.rint(np.repeat(x, 2) * 32767).astype(np.int16)
        self.frames = [pcm[i:i + 2 * FRAME] for i in range(0, len(pcm), 2 * FRAME)]

    async def recv(self) -> AudioFrame:
        if not self.frames:
            raise MediaStreamError
        frame = AudioFrame.from_ndarray(self.frames.pop(0).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = RATE
        return frame


async def test_read_audio_gives_the_session_mono_pcm16_that_its_decoder_takes():
    appended: list[bytes] = []
    x = tone(1.0, RATE, hz=1000)
    await read_audio(FakeTrack(x), appended.append)  # returns when the track ends
    assert [len(b) for b in appended] == [2 * FRAME] * 50  # mono pcm16, one append per 20 ms frame
    heard = np.frombuffer(b"".join(appended), "<i2") / 32768
    np.testing.assert_allclose(heard, x, atol=1e-4)  # two roundings to 16 bits (the fake track's, the reader's)
    decoder = InputDecoder(OPUS_PCM)  # what a WebRTC session decodes with: the same path as a WebSocket's
    y = np.concatenate([decoder.decode(b) for b in appended])
    assert 16_000 - 600 <= len(y) <= 16_000  # 1 s at 16 kHz, less what the streaming resampler holds back
    assert abs(peak_hz(y, 16_000) - 1000) < 5
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.02


class Handle:
    """An engine session that records what it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        return lambda *a, **k: self.calls.append((name, a, k))


class Engine:
    def open(self, sink) -> Handle:
        self.handle = Handle()
        return self.handle


def pcm48k(x16k: np.ndarray) -> bytes:
    """16 kHz test audio as a WebRTC track hands it over: pcm16 at 48 kHz."""
    return float_to_pcm16(np.repeat(x16k, 3)).tobytes()


async def test_webrtc_input_between_turns_holds_seconds_not_minutes(say):
    """A WebRTC mic streams all the time: 70 s of room noise must neither overflow a 5 s input buffer nor
    shift the timeline, and the turn after it still commits the speech with its prefix padding."""
    events: list = []
    engine = Engine()
    td = s.TurnDetection(VadConfig(prefix_padding_ms=200, silence_duration_ms=300))
    session = s.Session(engine, events.append, s.SessionConfig(turn_detection=td), max_buffer_s=5,
                        media_input=OPUS_PCM)
    rng = np.random.default_rng(0)
    for _ in range(3500):  # 70 s in 20 ms chunks
        session.append_audio(pcm48k((rng.standard_normal(320) * 1e-4).astype(np.float32)))
    assert events == []
    assert len(session._buffer) <= 16 * (200 + 1000 + 1000)
    speech = say("How is the weather today")
    audio = np.concatenate([speech, np.zeros(16_000, np.float32)])
    for i in range(0, len(audio), 320):
        session.append_audio(pcm48k(audio[i:i + 320]))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["SpeechEvent", "SpeechEvent", "AudioCommitted"], kinds
    started, stopped = events[0], events[1]
    assert 69_900 <= started.audio_ms <= 70_200  # the timeline still counts every ms pushed (30 ms VAD frames)
    assert stopped.audio_ms - started.audio_ms == pytest.approx(1000 * len(speech) / 16_000 + 300, abs=150)
    clip = next(k["audio"] for name, _, k in engine.handle.calls if name == "add_item" and k.get("audio") is not None)
    assert len(clip) / 16 == pytest.approx(stopped.audio_ms - started.audio_ms + 200, abs=40)
    session.close()
    session.append_audio(pcm48k(audio[:320]))  # after close: ignored
    assert len(events) == 4 and isinstance(events[3], s.ResponseStarted)


async def test_webrtc_input_ignores_the_client_input_format():
    """audio.input.format describes WebSocket bytes; a WebRTC session keeps decoding its track (OPUS_PCM)."""
    events: list = []
    session = s.Session(Engine(), events.append, s.SessionConfig(turn_detection=None), media_input=OPUS_PCM)
    session.update(replace(session.config, input_format=AudioFormat.parse("g711_ulaw")))
    assert session.config.input_format.kind == "pcmu"  # still what the client is told
    session.append_audio(pcm48k(tone(0.5, 16_000)))
    assert len(session._buffer) == pytest.approx(8000, abs=800)  # 0.5 s at 16 kHz, less the resampler's lag
