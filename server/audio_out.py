"""Where a response's speech goes. The Realtime adapter drives one `AudioOut` per connection the same way on
every transport: over a WebSocket it becomes `response.output_audio.delta` events (EventAudioOut, here); over
WebRTC it is the outgoing media track (server.webrtc_tracks.SpeechTrack), which also reports
output_audio_buffer.started / stopped / cleared as the audio really goes out.
"""

from __future__ import annotations

import base64
import typing
from collections.abc import Callable

import numpy as np

from streaming.audio import AudioFormat, OutputEncoder

__all__ = ["AudioOut", "AudioOutFactory", "Emit", "EventAudioOut"]

Emit = Callable[..., None]  # emit(type, **fields): one server event to the client


class AudioOut(typing.Protocol):
    def start(self, response_id: str, item_id: str, fmt: AudioFormat) -> None:
        """What play() gets from now on is this response's audio (for its item, in the session's output format
        where the transport has a choice)."""

    def play(self, pcm: np.ndarray) -> None:
        """The next piece of the current response's speech: float32 at 24 kHz."""

    def end(self, response_id: str) -> None:
        """That response has no more audio."""

    def clear(self) -> None:
        """Drop everything queued, now (barge-in, output_audio_buffer.clear)."""


AudioOutFactory = Callable[[Emit], AudioOut]  # what a transport hands the adapter: given the adapter's emit


class EventAudioOut:
    """WebSocket: each piece, encoded in the session's output format, as a response.output_audio.delta event."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self._where: dict | None = None  # the current response's event fields
        self._encoder: OutputEncoder | None = None

    def start(self, response_id: str, item_id: str, fmt: AudioFormat) -> None:
        self._where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        self._encoder = OutputEncoder(fmt)

    def play(self, pcm: np.ndarray) -> None:
        if self._encoder is not None:
            self._send(self._encoder.encode(pcm))

    def end(self, response_id: str) -> None:
        if self._where is not None and self._where["response_id"] == response_id:
            self._send(self._encoder.flush())  # what the output resampler still held
            self._where = self._encoder = None

    def clear(self) -> None:
        """Nothing is queued here: the client holds what was sent (and stops it itself)."""

    def _send(self, data: bytes) -> None:
        if data:
            self.emit("response.output_audio.delta", **self._where, delta=base64.b64encode(data).decode())
