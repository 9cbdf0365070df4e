"""Shared by the client scripts (stdlib only: each runs in its client's own environment)."""

from __future__ import annotations

import json
import sys
import wave

RATE = 24_000  # OpenAI Realtime's audio/pcm
# What follows a spoken turn: long enough for semantic_vad (the clients' default) to end a turn the end-of-turn
# model judged unfinished: its longest wait at eagerness medium/auto is 4 s of silence (streaming/endpoint.py).
TURN_SILENCE_MS = 4500


def read_pcm16(path: str) -> bytes:
    """A 24 kHz mono 16-bit WAV file's samples."""
    with wave.open(path, "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return w.readframes(w.getnframes())


def silence(ms: int) -> bytes:
    return bytes(2 * RATE * ms // 1000)


def chunks(pcm: bytes, ms: int = 40):
    step = 2 * RATE * ms // 1000
    for i in range(0, len(pcm), step):
        yield pcm[i:i + step]


def report(findings: dict) -> None:
    print(json.dumps(findings), flush=True)
    sys.stdout.flush()
