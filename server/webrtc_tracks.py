"""WebRTC media for a call: the outgoing track that paces the model's speech in 20 ms frames (the call's
`AudioOut`), and the reader of the incoming track, which hands the session mono pcm16 at 48 kHz (OPUS_PCM: it
goes through the session's InputDecoder like WebSocket audio).

The outgoing track is the only one that knows what the client really got, so it reports
output_audio_buffer.started (a response's first frame goes out), .stopped (its last frame went out after the
response ended) and .cleared (queued audio dropped on barge-in or output_audio_buffer.clear).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from models.defaults import OUTPUT_RATE
from streaming.audio import OPUS_RATE, AudioFormat, StreamResampler, float_to_pcm16

__all__ = ["FRAME", "RATE", "SpeechTrack", "read_audio", "to_mono"]

log = logging.getLogger("lfm_audio.webrtc")
RATE = OPUS_RATE
FRAME = 960  # 20 ms: one Opus frame
TIME_BASE = fractions.Fraction(1, RATE)
MAX_LATE_S = 0.1  # further behind than this (a stalled loop) and the clock restarts instead of bursting
SILENCE = np.zeros(FRAME, np.float32)


class SpeechTrack(MediaStreamTrack):
    """The model's 24 kHz speech as 48 kHz 20 ms frames in real time; silence when nothing is queued. An
    `AudioOut` (server.audio_out).

    `notify(type, **fields)` sends an event to the client. Everything runs on the event loop: the adapter calls
    start/play/end/clear, aiortc's sender calls recv."""

    kind = "audio"

    def __init__(self, notify: Callable[..., None]) -> None:
        super().__init__()
        self.notify = notify  # not `emit`: a track is an event emitter ("ended")
        self.frames: deque[tuple[str, np.ndarray]] = deque()  # (response id, FRAME samples)
        self.current: str | None = None  # the response whose audio play() takes
        self.playing: str | None = None  # the response whose audio is going out
        self._pending = np.zeros(0, np.float32)  # less than a frame, waiting for more
        self._resampler = StreamResampler(OUTPUT_RATE, RATE)
        self._start: float | None = None  # wall time of sample 0
        self._timestamp = 0  # samples sent

    # ---- the producer side (the Realtime adapter)
    def start(self, response_id: str, item_id: str = "", fmt: AudioFormat | None = None) -> None:
        """The item and the session's output format do not matter here: the media track is Opus."""
        if self.current is not None:
            self.end(self.current)
        self.current = response_id

    def play(self, pcm: np.ndarray) -> None:
        if self.current is not None:  # None: cleared, the rest of that response is dropped
            self._queue(self._resampler.process(pcm))

    def end(self, response_id: str) -> None:
        if self.current == response_id:
            self._queue(self._resampler.flush(), last=True)
            self.current = None

    def clear(self) -> None:
        ids = [self.playing, *(rid for rid, _ in self.frames), self.current]
        self.frames.clear()
        self._pending = np.zeros(0, np.float32)
        self._resampler.reset()
        self.playing = self.current = None
        for rid in dict.fromkeys(i for i in ids if i is not None):
            self.notify("output_audio_buffer.cleared", response_id=rid)

    def _queue(self, x: np.ndarray, last: bool = False) -> None:
        x = np.concatenate([self._pending, x])
        if last and len(x) % FRAME:  # the response's tail: pad its last frame with silence
            x = np.concatenate([x, np.zeros(FRAME - len(x) % FRAME, np.float32)])
        n = len(x) // FRAME
        self.frames.extend((self.current, x[i * FRAME:(i + 1) * FRAME]) for i in range(n))
        self._pending = x[n * FRAME:]

    # ---- the consumer side (aiortc's RTP sender)
    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._timestamp += FRAME
            wait = self._start + self._timestamp / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -MAX_LATE_S:
                self._start = now - self._timestamp / RATE
        # Take the frame after the sleep: a clear() during it drops this frame too.
        frame = AudioFrame.from_ndarray(float_to_pcm16(self._next()).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._timestamp, TIME_BASE
        return frame

    def _next(self) -> np.ndarray:
        if self.frames:
            rid, x = self.frames.popleft()
            if rid != self.playing:
                if self.playing is not None:  # one response's audio ran straight into the next one's
                    self.notify("output_audio_buffer.stopped", response_id=self.playing)
                self.playing = rid
                self.notify("output_audio_buffer.started", response_id=rid)
            return x
        if self.playing is not None and self.playing != self.current:  # drained, and its response has ended
            self.notify("output_audio_buffer.stopped", response_id=self.playing)
            self.playing = None
        return SILENCE


def to_mono(frame: AudioFrame) -> np.ndarray:
    """A decoded frame (any sample format and layout) as float32 mono in [-1, 1]."""
    x = frame.to_ndarray()
    scale = 1.0 / 2 ** (8 * x.itemsize - 1) if np.issubdtype(x.dtype, np.integer) else 1.0
    channels = len(frame.layout.channels)
    x = x.reshape(channels, -1).mean(axis=0) if frame.format.is_planar else x.reshape(-1, channels).mean(axis=1)
    return (x * scale).astype(np.float32)


async def read_audio(track: MediaStreamTrack, append: Callable[[bytes], None]) -> None:
    """The client's audio (Opus, which aiortc decodes at 48 kHz) as mono pcm16 bytes in OPUS_PCM -> append(),
    until the track ends."""
    warned = False
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if frame.sample_rate != RATE:  # Opus is always decoded at 48 kHz: not expected to happen
            if not warned:
                log.warning("dropping inbound audio at %d Hz: expected %d Hz", frame.sample_rate, RATE)
                warned = True
            continue
        append(float_to_pcm16(to_mono(frame)).tobytes())
