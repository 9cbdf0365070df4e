"""Turn detection on real speech (espeak-ng) padded with silence and low-level noise."""

import numpy as np
import pytest

from streaming.audio import AudioFormat, InputDecoder, float_to_pcm16, resample, ulaw_encode
from streaming.vad import FRAME_MS, SpeechStarted, SpeechStopped, TurnDetector, VadConfig, aggressiveness

HELLO = "Hello, how are you doing today?"
WEATHER = "The weather is nice and warm."
THRESHOLDS = [0.0, 0.3, 0.6, 0.9]  # one per webrtcvad mode


def gap(ms):
    return np.zeros(ms * 16, np.float32)


def scene(*parts, noise=0.003, seed=0):
    """Concatenated parts plus white noise (0.003 is about -50 dBFS, a quiet room through a cheap mic)."""
    x = np.concatenate(parts)
    return x + (noise * np.random.default_rng(seed).standard_normal(len(x))).astype(np.float32)


def ms(x):
    return len(x) * 1000 // 16000


def turns(events):
    """[(start, end, speech_end)] from alternating events, checking that they alternate."""
    assert all(isinstance(e, SpeechStarted if i % 2 == 0 else SpeechStopped) for i, e in enumerate(events))
    pairs = zip(events[::2], events[1::2], strict=False)
    return [(a.audio_start_ms, b.audio_end_ms, b.speech_end_ms) for a, b in pairs]


def in_turn_ms(events, total_ms):
    """Time inside turns, where a turn still open at the end runs to the end."""
    spans = turns(events)
    open_ms = total_ms - events[-1].audio_start_ms if len(events) % 2 else 0
    return sum(end - start for start, end, _ in spans) + open_ms


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_one_utterance_is_bracketed(say, threshold):
    speech = say(HELLO)
    x = scene(gap(700), speech, gap(1200))
    events = TurnDetector(VadConfig(threshold=threshold)).push(x)
    [(start, end, speech_end)] = turns(events)
    assert abs(start - 700) <= 100
    assert abs(speech_end - (700 + ms(speech))) <= 120
    assert 500 <= end - speech_end < 500 + FRAME_MS  # the stop is declared once the silence duration passed


def test_silence_duration_is_honoured(say):
    x = scene(gap(700), say(WEATHER), gap(2000))  # no comma: its pauses are all short
    for silence in (200, 500, 1000):
        [(_, end, speech_end)] = turns(TurnDetector(VadConfig(silence_duration_ms=silence)).push(x))
        assert silence <= end - speech_end < silence + FRAME_MS


def test_a_long_gap_gives_two_turns_and_a_short_one_gives_one(say):
    a, b = say(HELLO), say(WEATHER)
    two = turns(TurnDetector().push(scene(gap(700), a, gap(1000), b, gap(1000))))
    assert len(two) == 2
    assert abs(two[1][0] - (700 + ms(a) + 1000)) <= 100
    assert two[0][1] < two[1][0]
    one = turns(TurnDetector().push(scene(gap(700), a, gap(250), b, gap(1000))))
    assert len(one) == 1
    assert abs(one[0][2] - (700 + ms(a) + 250 + ms(b))) <= 120


def brown(level, seed, n=48000):
    """Low-frequency rumble (integrated white noise, its drift removed)."""
    b = np.cumsum(np.random.default_rng(seed).standard_normal(n))
    b -= np.convolve(b, np.ones(801) / 801, "same")
    return (level * b / b.std()).astype(np.float32)


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("noise", [0.0, 0.003, 0.01])
def test_silence_and_noise_give_no_turn(threshold, noise):
    assert TurnDetector(VadConfig(threshold=threshold)).push(scene(gap(3000), noise=noise, seed=3)) == []


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_noise_from_the_first_frame_gives_no_turn(threshold):
    # webrtcvad reads the first frames of this rumble as speech (about 180 ms in modes 0-1) while it adapts.
    assert TurnDetector(VadConfig(threshold=threshold)).push(brown(0.001, seed=1)) == []


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_clicks_do_not_start_a_turn(say, threshold):
    x = scene(gap(3000))
    x[16000 : 16000 + 80] += 0.8 * np.sin(0.7 * np.arange(80))  # a 5 ms click
    x[32000 : 32000 + 400] += say(HELLO)[4000:4400]  # a 25 ms piece of voiced speech
    d = TurnDetector(VadConfig(threshold=threshold))
    assert d.push(x) == []
    assert len(d.push(scene(gap(300), say(HELLO), seed=1))) == 1  # it still hears real speech


def test_chunking_gives_identical_events(say):
    x = scene(gap(500), say(HELLO), gap(700), say(WEATHER), gap(900))
    ref = TurnDetector().push(x)
    assert len(ref) == 4
    rng = np.random.default_rng(7)
    for most in (40, 700, 6000):
        d, got, i = TurnDetector(), [], 0
        while i < len(x):
            n = int(rng.integers(1, most))
            got += d.push(x[i : i + n])
            i += n
        assert got == ref
        assert d.now_ms == len(x) // 480 * FRAME_MS


def test_a_higher_threshold_is_never_more_sensitive(say):
    a, b = say(HELLO), say(WEATHER)
    strictly = False
    for gain, noise in [(0.05, 0.001), (0.1, 0.01), (0.1, 0.02), (0.2, 0.02), (1.0, 0.003)]:
        x = scene(gap(700), gain * a, gap(700), gain * b, gap(1000), noise=noise)
        heard = [in_turn_ms(TurnDetector(VadConfig(threshold=t)).push(x), ms(x)) for t in THRESHOLDS]
        assert heard == sorted(heard, reverse=True), (gain, noise, heard)
        strictly |= heard[0] > heard[-1]
    assert strictly  # and the threshold does change something


def test_threshold_maps_to_aggressiveness_in_quarters():
    assert [aggressiveness(t) for t in (0.0, 0.24, 0.25, 0.5, 0.74, 0.75, 1.0)] == [0, 0, 1, 2, 2, 3, 3]
    assert TurnDetector().mode == 2
    for bad in (dict(threshold=1.5), dict(threshold=-0.1), dict(silence_duration_ms=-1), dict(prefix_padding_ms=-5)):
        with pytest.raises(ValueError):
            VadConfig(**bad)


def test_clip_bounds_add_the_prefix_padding():
    d = TurnDetector(VadConfig(prefix_padding_ms=300))
    assert d.clip_bounds(1000, 2500) == (700 * 16, 2500 * 16)
    assert d.clip_bounds(100, 900) == (0, 900 * 16)


def test_reset_restarts_the_timeline_and_set_config_keeps_it(say):
    x = scene(gap(600), say(WEATHER), gap(800))
    d = TurnDetector()
    first = d.push(x)
    d.reset()
    assert d.now_ms == 0 and d.push(x) == first
    d.set_config(VadConfig(silence_duration_ms=200))
    later = d.push(x)  # the timeline runs on from the end of the second pass
    assert len(later) == 2 and abs(later[0].audio_start_ms - (ms(x) + first[0].audio_start_ms)) <= FRAME_MS
    assert later[1].audio_end_ms - later[1].speech_end_ms < 200 + FRAME_MS


@pytest.mark.parametrize("legacy", ["pcm16", "g711_ulaw"])
def test_wire_audio_through_the_decoder_keeps_the_timeline(say, legacy):
    """The client's 20 ms chunks -> InputDecoder -> detector: the resampler's lag does not shift event times."""
    x16 = scene(gap(700), say(HELLO), gap(1200))
    direct = TurnDetector().push(x16)
    fmt = AudioFormat.parse(legacy)
    wire = resample(x16, 16000, fmt.rate)
    data = float_to_pcm16(wire).tobytes() if fmt.kind == "pcm16" else ulaw_encode(wire)
    step = fmt.rate // 50 * fmt.width
    dec, d, events = InputDecoder(fmt), TurnDetector(), []
    for i in range(0, len(data), step):
        events += d.push(dec.decode(data[i : i + step]))
    events += d.push(dec.flush())
    assert len(events) == 2
    for got, ref in zip(turns(events)[0], turns(direct)[0], strict=True):
        assert abs(got - ref) <= FRAME_MS
