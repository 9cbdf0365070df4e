"""Real speech for the simulated users: espeak-ng, resampled with soxr to the wire's 24 kHz PCM16, trimmed to the
voiced part so that its last sample is the end of speech."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np
import soxr

from loadtests.scenario import WIRE_RATE

__all__ = ["Clip", "silence", "speech_clip"]

VOICED = 0.01  # |x| above this (full scale 1.0) counts as voiced: espeak-ng's silence is exact zeros plus dither
ESPEAK_WPM = 175  # espeak-ng's default speed; the starting point of the fit to a duration
WPM_RANGE = (80, 450)  # what espeak-ng accepts


@dataclass(frozen=True)
class Clip:
    pcm: bytes  # 16-bit little-endian mono at WIRE_RATE; first and last samples voiced
    text: str
    wpm: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / WIRE_RATE


def _espeak(text: str, wpm: int) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    out = subprocess.run(["espeak-ng", "--stdout", "-s", str(wpm), text], check=True, capture_output=True,
                         timeout=30).stdout
    with wave.open(io.BytesIO(out)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise RuntimeError(f"espeak-ng wrote {w.getnchannels()} channels of {8 * w.getsampwidth()} bits")
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(frames, "<i2").astype(np.float32) / 32768
    x = soxr.resample(x, rate, WIRE_RATE)
    on = np.flatnonzero(np.abs(x) > VOICED)
    if on.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r}")
    return x[on[0]:on[-1] + 1]


def speech_clip(text: str, seconds: float) -> Clip:
    """`text` spoken so that the voiced part lasts about `seconds` (espeak-ng's speed fitted in two passes)."""
    wpm = ESPEAK_WPM
    x = _espeak(text, wpm)
    for _ in range(2):  # duration is close to inversely proportional to speed; two passes land within a few %
        wpm = int(np.clip(round(wpm * len(x) / WIRE_RATE / seconds), *WPM_RANGE))
        x = _espeak(text, wpm)
    pcm = (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()
    return Clip(pcm, text, wpm)


def silence(ms: int) -> bytes:
    return bytes(2 * WIRE_RATE * ms // 1000)
