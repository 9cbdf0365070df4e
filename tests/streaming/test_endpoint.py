"""semantic_vad: smart-turn's features against Whisper's extractor, the shipped model on espeak-ng speech, and the
eagerness policy's timing (a scripted model, so the timeline is exact)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.defaults import INPUT_RATE
from streaming import endpoint as ep
from streaming import session as s
from streaming.vad import FRAME_MS, SpeechStarted, SpeechStopped, VadConfig
from tests.streaming.fixtures import logmel_reference as ref

COMPLETE = "Please turn off the lights."  # P(complete) ~0.99 at 200 and 600 ms of silence (bench.turn_eval)
CUT = "So I was thinking that"  # ~0.03 at 200 ms, under 0.2 at 600 ms
SLACK_MS = 2 * FRAME_MS + 30  # a frame of webrtcvad's judgement, its hangover trim, one more of ours
CHUNK = INPUT_RATE // 50  # 20 ms pushes, as a WebRTC client sends


def quiet(ms: int) -> np.ndarray:
    return np.zeros(ms * INPUT_RATE // 1000, np.float32)


def scene(*parts) -> np.ndarray:
    """The parts in a room: white noise at about -50 dBFS (a quiet room through a cheap microphone)."""
    x = np.concatenate(parts)
    return x + (0.003 * np.random.default_rng(0).standard_normal(x.size)).astype(np.float32)


def ms(x: np.ndarray) -> int:
    return 1000 * x.size // INPUT_RATE


def feed(detector, x: np.ndarray) -> list:
    events = []
    for i in range(0, x.size, CHUNK):
        events += detector.push(x[i:i + CHUNK])
    return events


class Scripted:
    """A model that answers from a list (the last answer repeats) and records what it heard."""

    def __init__(self, *answers: float):
        self.answers, self.heard = list(answers), []

    def probability(self, audio: np.ndarray) -> float:
        self.heard.append(audio.size)
        return self.answers[min(len(self.heard), len(self.answers)) - 1]


# ---- features and the model


def test_features_match_whisper_feature_extractor():
    expected = np.load(Path(ref.__file__).with_name("logmel_reference.npz"))["features"]
    ours = ref.selected(ep.log_mel(ep.fit_window(ref.signal())))
    # Both compute in float64 and round to float32 once: equal to about one float32 step at values near 1.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_the_window_keeps_the_last_8_s_and_pads_in_front():
    short = np.ones(INPUT_RATE, np.float32)
    w = ep.fit_window(short)
    assert w.size == ep.WINDOW and not w[: -INPUT_RATE].any() and w[-INPUT_RATE:].all()
    long = np.arange(10 * INPUT_RATE, dtype=np.float32)
    np.testing.assert_array_equal(ep.fit_window(long), long[-ep.WINDOW:])
    with pytest.raises(ValueError, match="128000 samples"):
        ep.log_mel(short)


def test_the_model_ships_in_the_package():
    path = ep.model_path()
    assert path.is_file() and path.name == "smart-turn-v3.2-cpu.onnx"
    assert path.stat().st_size > 1_000_000  # the weights themselves, not a Git LFS pointer
    model = ep.shared_model()
    assert model is ep.shared_model()  # loaded once per process


def test_the_model_judges_espeak_speech(say):
    model = ep.shared_model()
    pause = quiet(ep.PROBE_MS)
    complete = model.probability(scene(quiet(300), say(COMPLETE), pause))
    cut = model.probability(scene(quiet(300), say(CUT), pause))
    assert complete >= ep.EAGERNESS["low"].threshold  # complete for every eagerness
    assert cut < ep.EAGERNESS["high"].threshold  # incomplete for every eagerness


def test_inference_is_thread_safe(say):
    model = ep.shared_model()
    audio = scene(quiet(300), say(COMPLETE), quiet(ep.PROBE_MS))
    alone = model.probability(audio)
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(model.probability(audio))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == pytest.approx([alone] * 3, abs=1e-6)  # the same input, the same answer: no shared state


# ---- the detector with the real model


@pytest.mark.parametrize("eagerness", ["high", "auto", "low"])
def test_a_complete_sentence_ends_after_the_short_silence(say, eagerness):
    speech = say(COMPLETE)
    x = scene(quiet(700), speech, quiet(3000))
    events = feed(ep.SemanticTurnDetector(eagerness=eagerness), x)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    stop = events[1]
    assert abs(stop.speech_end_ms - (700 + ms(speech))) <= 120
    assert ep.PROBE_MS <= stop.audio_end_ms - stop.speech_end_ms < ep.PROBE_MS + SLACK_MS


def test_a_cut_sentence_waits_longer_and_eagerness_sets_how_long(say):
    speech = say(CUT)
    x = scene(quiet(700), speech, quiet(9000))
    waits = {}
    for eagerness in ("high", "medium", "low"):
        detector = ep.SemanticTurnDetector(eagerness=eagerness)
        _, stopped = feed(detector, x)
        waits[eagerness] = stopped.audio_end_ms - stopped.speech_end_ms
        assert [j.silence_ms for j in detector.judgements] == list(ep.PROBES_MS)  # asked twice, both incomplete
    longest = ep.EAGERNESS["low"].max_wait_ms + SLACK_MS
    assert ep.PROBES_MS[1] < waits["high"] < waits["medium"] < waits["low"] <= longest


# ---- the policy, with a scripted model


def test_complete_ends_at_the_probe_incomplete_at_the_max_wait(say):
    speech = say("The weather is nice and warm.")
    x = scene(quiet(700), speech, quiet(9000))
    for answer, eagerness, wait in [(0.99, "medium", ep.PROBE_MS), (0.0, "high", 2000), (0.0, "medium", 4000),
                                    (0.0, "low", 8000)]:
        detector = ep.SemanticTurnDetector(eagerness=eagerness, model=Scripted(answer))
        _, stop = feed(detector, x)
        assert wait <= stop.audio_end_ms - stop.speech_end_ms < wait + SLACK_MS, (answer, eagerness)


def test_a_missed_end_is_caught_at_the_second_probe(say):
    x = scene(quiet(700), say("The weather is nice and warm."), quiet(5000))
    detector = ep.SemanticTurnDetector(model=Scripted(0.1, 0.9))
    _, stop = feed(detector, x)
    assert ep.PROBES_MS[1] <= stop.audio_end_ms - stop.speech_end_ms < ep.PROBES_MS[1] + SLACK_MS
    assert [j.probability for j in detector.judgements] == [0.1, 0.9]


def test_the_wait_is_graded_by_the_probability():
    policy = ep.EAGERNESS["medium"]
    waits = [policy.wait_ms(p) for p in (0.0, 0.25, 0.49, 0.5, 1.0)]
    assert waits[0] == policy.max_wait_ms and waits[0] > waits[1] > waits[2] > waits[3] == waits[4] == ep.PROBE_MS
    assert policy.wait_ms(0.4, silence_ms=ep.PROBES_MS[1]) >= ep.PROBES_MS[1]


def test_speech_after_a_held_pause_continues_the_same_turn(say):
    first, second = say("I would like to order"), say("a large pizza please.")
    x = scene(quiet(700), first, quiet(800), second, quiet(3000))
    model = Scripted(0.0, 0.0, 0.99)  # incomplete at both probes of the pause, complete at the end
    events = feed(ep.SemanticTurnDetector(model=model), x)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert events[1].speech_end_ms > 700 + ms(first) + 800  # the end of the second part
    # The last question heard the whole turn: both parts, from prefix_padding_ms before the start.
    assert model.heard[-1] / INPUT_RATE * 1000 >= ms(first) + 800 + ms(second)


def test_a_failing_model_falls_back_to_server_vad(say, caplog):
    class Broken:
        def probability(self, audio):
            raise RuntimeError("boom")

    x = scene(quiet(700), say(COMPLETE), quiet(2000))
    detector = ep.SemanticTurnDetector(VadConfig(silence_duration_ms=500), model=Broken())
    _, stop = feed(detector, x)
    assert 500 <= stop.audio_end_ms - stop.speech_end_ms < 500 + SLACK_MS
    assert "end-of-turn model failed" in caplog.text


def test_background_judgements_do_not_hold_push(say):
    release = threading.Event()

    class Slow(Scripted):
        def probability(self, audio):
            release.wait(5)
            return super().probability(audio)

    x = scene(quiet(700), say(COMPLETE), quiet(1500))
    detector = ep.SemanticTurnDetector(model=Slow(0.99), background=True)
    split = (700 + ms(say(COMPLETE)) + 400) * INPUT_RATE // 1000  # past the probe, the answer not given yet
    t = time.perf_counter()
    events = feed(detector, x[:split])
    assert time.perf_counter() - t < 2 and [type(e) for e in events] == [SpeechStarted]
    release.set()
    time.sleep(0.2)
    (stop,) = feed(detector, x[split:])
    assert stop.audio_end_ms >= split * 1000 // INPUT_RATE  # taken at the first push after the answer


def test_eagerness_is_checked():
    with pytest.raises(ValueError, match="eagerness"):
        ep.SemanticTurnDetector(eagerness="eager")
    with pytest.raises(ValueError, match="eagerness"):
        s.TurnDetection(kind="semantic_vad", eagerness="soon")
    with pytest.raises(ValueError, match="semantic_vad"):
        s.TurnDetection(kind="vad")


# ---- the session


class _Handle:
    def __getattr__(self, name):
        return lambda *a, **k: None


class _Engine:
    def open(self, sink):
        return _Handle()


async def test_the_session_picks_the_detector_and_ends_a_complete_turn(say):
    events: list = []
    semantic = s.TurnDetection(kind="semantic_vad", eagerness="high", create_response=False)
    session = s.Session(_Engine(), events.append, s.SessionConfig(turn_detection=semantic))
    detector = session._vad
    assert isinstance(detector, ep.SemanticTurnDetector) and detector.eagerness == "high"
    session.update(s.SessionConfig(turn_detection=s.TurnDetection(kind="semantic_vad", eagerness="low",
                                                                  create_response=False)))
    assert session._vad is detector and detector.eagerness == "low"  # same kind: the timeline goes on

    speech = say(COMPLETE)
    x = scene(quiet(700), speech, quiet(2000))
    for i in range(0, x.size, CHUNK):
        session._take(x[i:i + CHUNK])
        await asyncio.sleep(0.002)  # the client's pace, so the worker's answer can arrive
    kinds = [(type(e).__name__, getattr(e, "kind", None)) for e in events]
    assert ("SpeechEvent", "started") in kinds and ("SpeechEvent", "stopped") in kinds
    assert "AudioCommitted" in [k for k, _ in kinds]
    stopped = next(e for e in events if getattr(e, "kind", None) == "stopped")
    assert stopped.audio_ms - (700 + ms(speech)) < 1000  # low eagerness, but the model called it complete

    session.update(s.SessionConfig(turn_detection=s.TurnDetection()))
    assert type(session._vad).__name__ == "TurnDetector"  # back to server_vad: a new detector


async def test_the_session_ends_a_turn_sent_in_one_burst(say):
    """A client that sends its whole utterance at once and then waits (no more audio): the model's answer,
    ready after the last push, still ends the turn."""
    events: list = []
    semantic = s.TurnDetection(kind="semantic_vad", eagerness="high", create_response=False)
    session = s.Session(_Engine(), events.append, s.SessionConfig(turn_detection=semantic))
    release = threading.Event()

    class Held(Scripted):  # complete, once the whole burst has been pushed
        def probability(self, audio):
            release.wait(5)
            return super().probability(audio)

    session._vad._model = Held(0.99)
    session._take(scene(quiet(300), say(COMPLETE), quiet(400)))
    assert "stopped" not in [getattr(e, "kind", None) for e in events]  # the answer is not in yet
    release.set()  # ... and now arrives, with no more audio to push
    for _ in range(200):
        await asyncio.sleep(0.01)
        if "stopped" in [getattr(e, "kind", None) for e in events]:
            break
    assert "stopped" in [getattr(e, "kind", None) for e in events]
    assert "AudioCommitted" in [type(e).__name__ for e in events]
