"""Wire formats, G.711 against the reference codec, streaming resampling, and the session's codecs."""

import time
import warnings

import numpy as np
import pytest
import soxr

from streaming.audio import (
    AudioFormat,
    InputDecoder,
    OutputEncoder,
    StreamResampler,
    UnsupportedFormat,
    alaw_decode,
    alaw_encode,
    float_to_pcm16,
    pcm16_to_float,
    ulaw_decode,
    ulaw_encode,
)

ALL_PCM = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


def audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the CPython reference codec (removed in 3.13; tests only)
    return audioop


def chunks(x, rng, most=2000):
    i = 0
    while i < len(x):
        n = int(rng.integers(1, most))
        yield x[i : i + n]
        i += n


def sine(freq, rate, seconds, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def snr_db(ref, x):
    return 10 * np.log10(np.sum(ref**2) / np.sum((ref - x) ** 2))


# --- formats ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "kind", "rate"),
    [
        ({"type": "audio/pcm", "rate": 24000}, "pcm16", 24000),
        ({"type": "audio/pcm"}, "pcm16", 24000),
        ({"type": "audio/pcmu"}, "pcmu", 8000),
        ({"type": "audio/pcma"}, "pcma", 8000),
        ("pcm16", "pcm16", 24000),
        ("g711_ulaw", "pcmu", 8000),
        ("g711_alaw", "pcma", 8000),
    ],
)
def test_parse_accepts_the_ga_and_legacy_shapes(value, kind, rate):
    fmt = AudioFormat.parse(value)
    assert (fmt.kind, fmt.rate) == (kind, rate)
    assert AudioFormat.parse(fmt.to_openai()) == fmt
    assert AudioFormat.parse(fmt) is fmt


def test_to_openai_gives_the_ga_dicts():
    assert AudioFormat().to_openai() == {"type": "audio/pcm", "rate": 24000}
    assert AudioFormat.parse("g711_ulaw").to_openai() == {"type": "audio/pcmu"}
    assert AudioFormat.parse("g711_alaw").to_openai() == {"type": "audio/pcma"}
    assert [AudioFormat.parse(v).width for v in ("pcm16", "g711_ulaw")] == [2, 1]


@pytest.mark.parametrize(
    "value",
    [{"type": "audio/pcm", "rate": 16000}, {"type": "audio/pcmu", "rate": 16000}, {"type": "audio/opus"}, "opus",
     "audio/pcm", {}, None, 24000],
)
def test_parse_rejects_the_rest_and_says_what_is_supported(value):
    with pytest.raises(UnsupportedFormat, match="audio/pcmu") as err:
        AudioFormat.parse(value)
    assert isinstance(err.value, ValueError) and "g711_alaw" in str(err.value)


def test_a_format_cannot_be_built_at_another_rate():
    with pytest.raises(UnsupportedFormat):
        AudioFormat("pcm16", 16000)
    with pytest.raises(UnsupportedFormat):
        AudioFormat("opus", 48000)


# --- PCM and G.711 ---------------------------------------------------------------------------------------------

def test_pcm16_float_round_trip_is_lossless():
    assert float_to_pcm16(pcm16_to_float(ALL_PCM)).tobytes() == ALL_PCM
    assert float_to_pcm16(np.array([1.5, 1.0, -1.0, -2.0])).tolist() == [32767, 32767, -32768, -32768]


def test_g711_matches_the_reference_codec_on_every_value():
    ref = audioop()
    x = pcm16_to_float(ALL_PCM)
    assert ulaw_encode(x) == ref.lin2ulaw(ALL_PCM, 2)
    assert alaw_encode(x) == ref.lin2alaw(ALL_PCM, 2)
    assert float_to_pcm16(ulaw_decode(ALL_CODES)).tobytes() == ref.ulaw2lin(ALL_CODES, 2)
    assert float_to_pcm16(alaw_decode(ALL_CODES)).tobytes() == ref.alaw2lin(ALL_CODES, 2)


def test_g711_known_codes_and_quality():
    assert ulaw_encode(np.zeros(1)) == b"\xff" and alaw_encode(np.zeros(1)) == b"\xd5"
    assert ulaw_encode(np.array([1.0, -1.0])) == b"\x80\x00" and alaw_encode(np.array([1.0, -1.0])) == b"\xaa\x2a"
    x = sine(440, 8000, 0.5, amp=0.3)  # about -13 dBFS: G.711 keeps ~38 dB SNR over a wide range
    assert snr_db(x, ulaw_decode(ulaw_encode(x))) > 35
    assert snr_db(x, alaw_decode(alaw_encode(x))) > 35


# --- streaming resampling --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rate_in", "rate_out"), [(24000, 16000), (24000, 8000), (8000, 16000), (16000, 24000)])
def test_resampling_does_not_depend_on_chunking(rate_in, rate_out):
    rng = np.random.default_rng(rate_in + rate_out)
    x = (0.3 * rng.standard_normal(rate_in)).astype(np.float32)
    whole = StreamResampler(rate_in, rate_out)
    ref = np.concatenate([whole.process(x), whole.flush()])
    parts = StreamResampler(rate_in, rate_out)
    got = np.concatenate([parts.process(c) for c in chunks(x, rng)] + [parts.flush()])
    assert len(ref) == rate_out  # one second in, one second out
    assert np.array_equal(got, ref)
    assert np.array_equal(ref, soxr.resample(x, rate_in, rate_out, quality="HQ"))


def test_a_sine_keeps_its_frequency_and_amplitude():
    r = StreamResampler(24000, 16000)
    x = sine(1000, 24000, 1.0)
    y = np.concatenate([r.process(c) for c in np.array_split(x, 50)] + [r.flush()])
    mid = y[2000:-2000]  # away from the edges
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    assert abs(np.argmax(spectrum) * 16000 / len(mid) - 1000) < 2
    assert abs(np.max(np.abs(mid)) - 0.5) < 0.005
    assert snr_db(sine(1000, 16000, 1.0)[2000:-2000], mid) > 60  # and its phase: no delay in the output


def test_flush_drains_the_tail_and_starts_a_fresh_stream():
    x = sine(300, 24000, 0.2)
    r = StreamResampler(24000, 8000)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    assert len(first) == 1600 and np.array_equal(first, second)
    r.process(x)
    r.reset()
    assert np.array_equal(np.concatenate([r.process(x), r.flush()]), first)


def test_equal_rates_pass_through():
    r = StreamResampler(16000, 16000)
    x = sine(300, 16000, 0.1)
    assert np.array_equal(r.process(x), x) and r.flush().size == 0


# --- session codecs --------------------------------------------------------------------------------------------

def test_pcm16_input_decodes_to_16k_with_odd_byte_chunks():
    rng = np.random.default_rng(1)
    x = sine(440, 24000, 0.5) + (0.01 * rng.standard_normal(12000)).astype(np.float32)
    data = float_to_pcm16(x).tobytes()
    one = InputDecoder(AudioFormat())
    ref = np.concatenate([one.decode(data), one.flush()])
    cuts = np.sort(rng.choice(np.arange(1, len(data)), 40, replace=False))
    assert any(c % 2 for c in cuts)
    dec = InputDecoder(AudioFormat())
    parts = [p.tobytes() for p in np.split(np.frombuffer(data, np.uint8), cuts)]
    got = np.concatenate([dec.decode(p) for p in parts] + [dec.flush()])
    assert len(got) == 8000 and np.array_equal(got, ref)
    assert np.array_equal(ref, soxr.resample(pcm16_to_float(data), 24000, 16000, quality="HQ"))


@pytest.mark.parametrize(("legacy", "encode", "decode"), [("g711_ulaw", ulaw_encode, ulaw_decode),
                                                          ("g711_alaw", alaw_encode, alaw_decode)])
def test_g711_input_decodes_to_16k(legacy, encode, decode):
    data = encode(sine(440, 8000, 0.5, amp=0.3))
    dec = InputDecoder(AudioFormat.parse(legacy))
    got = np.concatenate([dec.decode(data[i : i + 160]) for i in range(0, len(data), 160)] + [dec.flush()])
    assert np.array_equal(got, soxr.resample(decode(data), 8000, 16000, quality="HQ"))
    assert snr_db(sine(440, 16000, 0.5, amp=0.3)[1000:-1000], got[1000:-1000]) > 30


def test_pcm16_output_is_little_endian_24k():
    x = sine(440, 24000, 0.08)
    enc = OutputEncoder(AudioFormat())
    out = enc.encode(x)
    assert out == float_to_pcm16(x).astype("<i2").tobytes() and len(out) == 2 * 1920 and enc.flush() == b""


@pytest.mark.parametrize(("legacy", "decode"), [("g711_ulaw", ulaw_decode), ("g711_alaw", alaw_decode)])
def test_g711_output_is_8k_and_chunking_free(legacy, decode):
    x = sine(440, 24000, 0.96, amp=0.3)
    enc = OutputEncoder(AudioFormat.parse(legacy))
    out = b"".join([enc.encode(c) for c in np.split(x, 12)] + [enc.flush()])  # 80 ms frames
    assert len(out) == 7680
    one = OutputEncoder(AudioFormat.parse(legacy))
    assert out == one.encode(x) + one.flush()
    assert snr_db(sine(440, 8000, 0.96, amp=0.3)[400:-400], decode(out)[400:-400]) > 30


def test_per_chunk_cost_is_small():
    dec, enc = InputDecoder(AudioFormat()), OutputEncoder(AudioFormat.parse("g711_ulaw"))
    chunk_in, chunk_out = float_to_pcm16(sine(440, 24000, 0.02)).tobytes(), sine(440, 24000, 0.08)
    costs = []
    for _ in range(200):
        t = time.perf_counter()
        dec.decode(chunk_in)
        enc.encode(chunk_out)
        costs.append(time.perf_counter() - t)
    assert np.median(costs) < 2e-3  # measured ~0.03 ms; the bound only catches an accidental O(stream) cost
