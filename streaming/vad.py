"""Turn detection with webrtcvad, with OpenAI `server_vad` semantics (threshold, prefix_padding_ms,
silence_duration_ms). Fed 16 kHz float32 in any chunk sizes; times are ms since the stream start."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import webrtcvad

from models.defaults import INPUT_RATE
from streaming.audio import float_to_pcm16

__all__ = ["FRAME_MS", "SpeechPaused", "SpeechResumed", "SpeechStarted", "SpeechStopped", "TurnDetector", "VadConfig",
           "aggressiveness"]

FRAME_MS = 30
_FRAME = INPUT_RATE * FRAME_MS // 1000
# webrtcvad flags extra "hangover" frames after raw speech (vad_core.c, 30 ms frames): kOverHangMax1 after a short
# raw streak, kOverHangMax2 after more than kMaxSpeechFrames (6); modes 0-1 hang longer than 2-3. So one loud click
# comes out as 3-4 voiced frames: runs are judged and speech ends are placed with this hangover taken off.
_HANG = {0: (3, 5), 1: (3, 5), 2: (2, 3), 3: (2, 3)}
_MAX_SPEECH = 6
# Its noise model starts from fixed priors: on noise, the first 1-3 raw frames read as speech until it adapts
# (with hangover, up to ~180 ms). The first 150 ms are not let start a run; what remains is too short to.
_WARMUP = 5


@dataclass(frozen=True)
class VadConfig:
    """OpenAI server_vad knobs. threshold in [0, 1] picks webrtcvad's aggressiveness (see aggressiveness())."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0:
            raise ValueError("prefix_padding_ms and silence_duration_ms must be >= 0")


def aggressiveness(threshold: float) -> int:
    """threshold -> webrtcvad mode, in quarters: [0, .25) -> 0, [.25, .5) -> 1, [.5, .75) -> 2, [.75, 1] -> 3.
    A higher threshold is a more aggressive mode: it needs clearer speech, as a higher speech probability
    threshold does for OpenAI. The default 0.5 is mode 2."""
    return min(3, int(threshold * 4))


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # where the voiced run began (without prefix padding)


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # when the stop was declared: the last speech plus the silence duration
    speech_end_ms: int | None = None  # the end of the last speech (t_speech_end for latency metrics)


@dataclass(frozen=True)
class SpeechPaused:
    """Silence has lasted `pause_ms` (or the whole silence window, if that is shorter) within a turn, where a
    speculative start begins (streaming/speculation.py). The turn is not over: a SpeechResumed or a SpeechStopped
    follows."""

    audio_end_ms: int  # now
    speech_end_ms: int  # the end of the last speech: a SpeechStopped without new speech reports the same


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back after a SpeechPaused, before the turn ended: the same turn goes on."""

    audio_ms: int


TurnEvent = SpeechStarted | SpeechStopped | SpeechPaused | SpeechResumed


class TurnDetector:
    """Speech starts after a run of voiced frames worth min_speech_ms (beyond webrtcvad's hangover, so clicks do
    not count); it stops once silence_duration_ms passed since the last such speech. Short voiced blips inside
    the silence neither start a turn nor extend one. With `pause_ms`, a turn's silence reports SpeechPaused when it
    has lasted that long (at most the silence window) and SpeechResumed if speech comes back before the stop."""

    def __init__(self, config: VadConfig | None = None, min_speech_ms: int = 90, pause_ms: int | None = None):
        self.min_speech_ms = min_speech_ms
        self.pause_ms = pause_ms
        self.config = config or VadConfig()
        self.mode = aggressiveness(self.config.threshold)
        self.reset()

    def set_config(self, config: VadConfig) -> None:
        """Takes effect at the next frame; the timeline and the noise model carry on."""
        self.config = config
        self.mode = aggressiveness(config.threshold)
        self._vad.set_mode(self.mode)

    def reset(self) -> None:
        """As new: the timeline restarts at 0 and the noise model is learned again."""
        self._vad = webrtcvad.Vad(self.mode)
        self._rest = np.zeros(0, np.float32)  # less than a frame, waiting for more
        self._frames = 0  # frames judged so far
        self._run = 0  # the current run of voiced frames
        self._voice_end = 0  # frame index just after the last confirmed speech
        self._stopped_at = 0
        self._paused = False
        self.speaking = False

    @property
    def now_ms(self) -> int:
        """The end of the audio judged so far (a partial frame waits for the next push)."""
        return self._frames * FRAME_MS

    def clip_bounds(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """The 16 kHz sample range of a turn on this detector's timeline, with prefix_padding_ms before it."""
        start = max(0, start_ms - self.config.prefix_padding_ms)
        return start * INPUT_RATE // 1000, end_ms * INPUT_RATE // 1000

    def push(self, x: np.ndarray) -> list[TurnEvent]:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._rest.size:
            x = np.concatenate([self._rest, x])
        n = x.size // _FRAME
        pcm = float_to_pcm16(x[: n * _FRAME]).tobytes()
        self._rest = x[n * _FRAME :].copy()
        events = []
        for i in range(n):
            voiced = self._vad.is_speech(pcm[i * 2 * _FRAME : (i + 1) * 2 * _FRAME], INPUT_RATE)
            self._frames += 1
            events.extend(self._step(voiced and self._frames > _WARMUP))
        return events

    def _step(self, voiced: bool) -> list[TurnEvent]:
        hang1, hang2 = _HANG[self.mode]
        need = hang1 + math.ceil(self.min_speech_ms / FRAME_MS)
        if voiced:
            self._run += 1
            if self._run >= need:
                self._voice_end = self._frames  # for now; trimmed of the hangover when the run ends
                if not self.speaking:
                    self.speaking = True
                    start = max((self._frames - self._run) * FRAME_MS, self._stopped_at)
                    return [SpeechStarted(start)]
                if self._paused:
                    self._paused = False
                    return [SpeechResumed((self._frames - self._run) * FRAME_MS)]
        else:
            if self._run >= need:
                hang = hang2 if self._run > _MAX_SPEECH + hang2 else hang1
                end = self._frames - 1
                self._voice_end = max(end - hang, end - self._run + 1)
            self._run = 0
        # Silence runs up to the start of a voiced run still in progress: that run may yet prove to be speech.
        silence = (self._frames - self._run - self._voice_end) * FRAME_MS
        events: list[TurnEvent] = []
        window = self.config.silence_duration_ms
        if self.speaking and self.pause_ms is not None and not self._paused and silence >= min(self.pause_ms, window):
            self._paused = True
            events.append(SpeechPaused(self.now_ms, self._voice_end * FRAME_MS))
        if self.speaking and silence >= window:
            self.speaking = self._paused = False
            self._stopped_at = self.now_ms
            events.append(SpeechStopped(self.now_ms, self._voice_end * FRAME_MS))
        return events
