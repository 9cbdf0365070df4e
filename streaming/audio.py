"""Audio helpers in NumPy: WAV files, PCM conversion, resampling with soxr."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

__all__ = ["float_to_pcm16", "pcm16_to_float", "read_wav", "resample", "write_wav"]


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    data = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes | bytearray | memoryview) else pcm
    return data.astype(np.float32) / 32768.0


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8/16/24/32-bit) as mono float32 in [-1, 1] and its sample rate."""
    with wave.open(str(path), "rb") as f:
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
