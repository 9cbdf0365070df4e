"""Audio helpers in NumPy: WAV files, PCM conversion, G.711, streaming resampling with soxr, and the
session's wire formats (what a client sends and receives) to and from float32."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soxr

from models.defaults import INPUT_RATE, OUTPUT_RATE, WIRE_RATE

__all__ = [
    "OPUS_PCM",
    "OPUS_RATE",
    "AudioFormat",
    "InputDecoder",
    "OutputEncoder",
    "SampleBuffer",
    "StreamResampler",
    "UnsupportedFormat",
    "alaw_decode",
    "alaw_encode",
    "float_to_pcm16",
    "pcm16_to_float",
    "read_wav",
    "resample",
    "ulaw_decode",
    "ulaw_encode",
    "write_wav",
]

OPUS_RATE = 48_000  # WebRTC's Opus clock: what a decoded media track carries


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    data = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes | bytearray | memoryview) else pcm
    return data.astype(np.float32) / 32768.0


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    # Scale by 32768 (the inverse of pcm16_to_float) so that pcm16 -> float -> pcm16 is lossless.
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 32768.0), -32768, 32767).astype("<i2")


def read_wav(path: str | Path | BinaryIO) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8/16/24/32-bit) as mono float32 in [-1, 1] and its sample rate."""
    with wave.open(path if hasattr(path, "read") else str(path), "rb") as f:
        rate, width, channels = f.getframerate(), f.getsampwidth(), f.getnchannels()
        raw = f.readframes(f.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"{path}: unsupported sample width {width}")
    return x.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(float_to_pcm16(np.asarray(audio, dtype=np.float32)).tobytes())


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return x.astype(np.float32)
    return soxr.resample(x.astype(np.float32), rate_in, rate_out, quality="HQ").astype(np.float32)


# --- G.711 (ITU-T): 16-bit linear <-> 8-bit codes, as tables built once -------------------------------------
# Encoding indexes a 65536-entry table by the int16 sample, so it is exact for every input and one gather per
# chunk. The formulas are the reference ones: mu-law works on the top 14 bits, A-law on the top 13.

def _segment(v: np.ndarray, ends: list[int]) -> np.ndarray:
    return np.searchsorted(np.array(ends), v, side="left")  # first segment whose end is >= v; 8 = overflow


def _ulaw_table() -> tuple[np.ndarray, np.ndarray]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21  # clip, then add the bias (0x84 >> 2)
    seg = _segment(mag, [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0xF)) ^ mask
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0xF) << 3) + 0x84) << ((u & 0x70) >> 4)
    lin = np.where(u & 0x80, 0x84 - t, t - 0x84)
    return np.roll(code.astype(np.uint8), -32768), lin.astype(np.int16)


def _alaw_table() -> tuple[np.ndarray, np.ndarray]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    low = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (seg << 4) | low) ^ mask
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg_d = (a & 0x70) >> 4
    t = ((a & 0xF) << 4) + np.where(seg_d == 0, 8, 0x108)
    t = np.where(seg_d > 1, t << np.maximum(seg_d - 1, 0), t)
    lin = np.where(a & 0x80, t, -t)
    return np.roll(code.astype(np.uint8), -32768), lin.astype(np.int16)


# Encode tables are indexed by the int16 sample viewed as uint16 (hence the roll); decode tables by the code.
_ULAW_ENC, _ULAW_DEC = _ulaw_table()
_ALAW_ENC, _ALAW_DEC = _alaw_table()
_ULAW_DEC_F = _ULAW_DEC.astype(np.float32) / 32768.0
_ALAW_DEC_F = _ALAW_DEC.astype(np.float32) / 32768.0


def ulaw_encode(x: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> G.711 mu-law bytes, one per sample."""
    return _ULAW_ENC[float_to_pcm16(x).view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    return _ULAW_DEC_F[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(x: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> G.711 A-law bytes, one per sample."""
    return _ALAW_ENC[float_to_pcm16(x).view(np.uint16)].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    return _ALAW_DEC_F[np.frombuffer(data, dtype=np.uint8)]


# --- wire formats --------------------------------------------------------------------------------------------

class UnsupportedFormat(ValueError):
    pass


_GA_TYPES = {"pcm16": "audio/pcm", "pcmu": "audio/pcmu", "pcma": "audio/pcma"}
_LEGACY = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
_RATES = {"pcm16": WIRE_RATE, "pcmu": 8_000, "pcma": 8_000}  # G.711 is 8 kHz by definition
_SUPPORTED = (
    "supported: {'type': 'audio/pcm', 'rate': 24000}, {'type': 'audio/pcmu'}, {'type': 'audio/pcma'}"
    " (or the legacy 'pcm16', 'g711_ulaw', 'g711_alaw')"
)


@dataclass(frozen=True)
class AudioFormat:
    """A session's audio format on the wire: pcm16 (little-endian) at 24 kHz, or G.711 mu-law/A-law at 8 kHz; or
    OPUS_PCM, what a WebRTC track decodes to."""

    kind: str = "pcm16"
    rate: int = WIRE_RATE

    def __post_init__(self):
        if _RATES.get(self.kind) != self.rate and (self.kind, self.rate) != ("pcm16", OPUS_RATE):
            raise UnsupportedFormat(f"unsupported audio format {self.kind} at {self.rate} Hz; {_SUPPORTED}")

    @classmethod
    def parse(cls, value: object) -> AudioFormat:
        """An OpenAI Realtime format: the GA dict ({"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"},
        {"type": "audio/pcma"}) or a legacy string ("pcm16", "g711_ulaw", "g711_alaw")."""
        if isinstance(value, AudioFormat):
            return value
        kind = rate = None
        if isinstance(value, str):
            kind = _LEGACY.get(value)
        elif isinstance(value, dict):
            kind = {v: k for k, v in _GA_TYPES.items()}.get(value.get("type"))
            rate = value.get("rate")
        if kind is None or (rate is not None and rate != _RATES[kind]):
            raise UnsupportedFormat(f"unsupported audio format {value!r}; {_SUPPORTED}")
        return cls(kind, _RATES[kind])

    def to_openai(self) -> dict:
        return {"type": "audio/pcm", "rate": self.rate} if self.kind == "pcm16" else {"type": _GA_TYPES[self.kind]}

    @property
    def width(self) -> int:
        """Bytes per sample on the wire."""
        return 2 if self.kind == "pcm16" else 1


# A decoded WebRTC track as pcm16 bytes: the WebRTC input goes through InputDecoder like a WebSocket's. Never a
# wire format (parse() refuses it): the client's audio.input.format does not apply to Opus media.
OPUS_PCM = AudioFormat("pcm16", OPUS_RATE)


# --- streaming resampling and the session's codecs ------------------------------------------------------------

class StreamResampler:
    """Mono float32 resampling across chunks; the output does not depend on how the input was split.

    soxr works in internal blocks, so output lags input by a varying amount (HQ, 20 ms chunks: up to ~37 ms for
    24k->16k, ~70 ms for 24k->8k, ~115 ms for 8k->16k). flush() drains that tail and starts a fresh stream."""

    def __init__(self, rate_in: int, rate_out: int, quality: str = "HQ"):
        self.rate_in, self.rate_out, self.quality = rate_in, rate_out, quality
        self._stream = self._new()

    def _new(self) -> soxr.ResampleStream | None:
        if self.rate_in == self.rate_out:
            return None
        return soxr.ResampleStream(self.rate_in, self.rate_out, 1, dtype="float32", quality=self.quality)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if self._stream is None or x.size == 0:
            return x.copy() if self._stream is None else np.zeros(0, np.float32)
        return self._stream.resample_chunk(x)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self._stream = self._new()
        return tail

    def reset(self) -> None:
        """Drop whatever is buffered."""
        self._stream = self._new()


class InputDecoder:
    """Wire bytes in the session's input format -> float32 at 16 kHz, chunk by chunk."""

    def __init__(self, fmt: AudioFormat, rate: int = INPUT_RATE):
        self.fmt, self.rate = fmt, rate
        self._resampler = StreamResampler(fmt.rate, rate)
        self._carry = b""  # the odd byte of a pcm16 chunk, completed by the next chunk
        self.received_s = 0.0  # input decoded so far (the resampler's output lags it by its delay)

    def decode(self, data: bytes) -> np.ndarray:
        if self.fmt.kind == "pcm16":
            if self._carry:
                data = self._carry + data
            cut = len(data) & ~1
            self._carry = bytes(data[cut:])
            x = pcm16_to_float(bytes(data[:cut]))
        else:
            x = ulaw_decode(data) if self.fmt.kind == "pcmu" else alaw_decode(data)
        self.received_s += x.size / self.fmt.rate
        return self._resampler.process(x)

    def flush(self) -> np.ndarray:
        """The audio still inside the resampler (call at a manual commit); a dangling odd byte is dropped."""
        self._carry = b""
        return self._resampler.flush()


class OutputEncoder:
    """float32 at 24 kHz (the detokenizer's output) -> wire bytes in the session's output format."""

    def __init__(self, fmt: AudioFormat, rate: int = OUTPUT_RATE):
        self.fmt = fmt
        self._resampler = StreamResampler(rate, fmt.rate)

    def _pack(self, x: np.ndarray) -> bytes:
        if self.fmt.kind == "pcm16":
            return float_to_pcm16(x).tobytes()
        return ulaw_encode(x) if self.fmt.kind == "pcmu" else alaw_encode(x)

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._pack(self._resampler.process(pcm))

    def flush(self) -> bytes:
        """The end of a response: whatever the resampler still holds."""
        return self._pack(self._resampler.flush())


class SampleBuffer:
    """float32 samples appended at the end and consumed from the front, in amortized O(1) per sample.

    One preallocated array with a start offset: appending copies only the new samples, except when the array is
    full; then it doubles, or, when most of it has been consumed already, the live samples move to its front.
    Either way a move copies at most as many samples as were appended or consumed since the last one, so N
    samples cost O(N) copies in all (`copied` counts them). Copying the whole buffer on each append, as a
    concatenate does, costs O(N^2) for N samples streamed in small chunks."""

    def __init__(self, capacity: int = INPUT_RATE) -> None:
        self._initial = capacity
        self._data = np.zeros(capacity, np.float32)
        self._start = self._end = 0  # live samples: _data[_start:_end]
        self.copied = 0  # samples moved by growth or compaction (not counting the appends themselves)
        self.allocations = 1

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def capacity(self) -> int:
        return len(self._data)

    def view(self) -> np.ndarray:
        """The live samples, without a copy: valid until the next append."""
        return self._data[self._start:self._end]

    def append(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        n, live = len(x), len(self)
        if self._end + n > len(self._data):
            if live + n <= len(self._data) // 2:  # mostly consumed: move the live part to the front
                self._data[:live] = self._data[self._start:self._end]
            else:
                grown = np.empty(max(2 * len(self._data), live + n), np.float32)
                grown[:live] = self._data[self._start:self._end]
                self._data = grown
                self.allocations += 1
            self.copied += live
            self._start, self._end = 0, live
        self._data[self._end:self._end + n] = x
        self._end += n

    def drop(self, n: int) -> None:
        """Forget the first n samples (all of them, if there are fewer)."""
        self._start = min(self._start + max(n, 0), self._end)
        if self._start == self._end:  # empty: start over at the front, for free
            self._start = self._end = 0

    def take(self, a: int, b: int) -> np.ndarray:
        """A copy of samples [a, b) (clamped to what is there; empty if b <= a); everything before the range's
        end is then dropped."""
        a = min(max(a, 0), len(self))
        b = min(max(b, a), len(self))
        clip = self._data[self._start + a:self._start + b].copy()
        self.drop(b)
        return clip

    def clear(self) -> None:
        """Empty, and back to the initial capacity (a long turn's memory is given back)."""
        if len(self._data) != self._initial:
            self._data = np.zeros(self._initial, np.float32)
            self.allocations += 1
        self._start = self._end = 0
