"""The WebRTC option (basic): an aiortc peer posting its offer to `POST /v1/realtime/calls`, the clip as a 48 kHz
Opus mic track paced in real time, events on the `oai-events` data channel, the reply as the server's audio track.

Loopback only: no STUN/TURN (`iceServers=[]`) and host candidates on 127.0.0.1 alone (aioice skips loopback
unless told; this is the load generator's own process). Start the server with `--webrtc-host-addresses 127.0.0.1`
(`run`/`sweep` add it). The server paces the track itself, so reply audio is every non-silent frame; the player
holds JITTER_S of audio first, as a WebRTC jitter buffer does, so arrival jitter alone is not an underrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable

import aioice.ice
import httpx
import numpy as np
import soxr
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from loadtests.links import Mic, Rejected, check_loopback
from loadtests.scenario import WIRE_RATE

__all__ = ["JITTER_S", "SERVER_ARGS", "WebRTCLink"]

RTC_RATE, RTC_FRAME = 48_000, 960  # WebRTC audio: 48 kHz, 20 ms frames
JITTER_S = 0.06  # what a WebRTC receiver buffers before it plays (a few frames)
SILENT_PEAK = 1e-3  # a decoded frame quieter than this (-60 dBFS) is the server's filler silence
SERVER_ARGS = ["--webrtc-host-addresses", "127.0.0.1"]


def _loopback_only() -> None:
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


class _MicTrack(MediaStreamTrack):
    """Pulled by aiortc every 20 ms; the Mic's pacing is the track's own clock here."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._pts = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pcm = await self.chunks.get()  # the Mic hands over one 20 ms chunk per tick
        x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
        y = soxr.resample(x, WIRE_RATE, RTC_RATE)[:RTC_FRAME]
        y = np.pad(y, (0, RTC_FRAME - len(y)))
        frame = AudioFrame.from_ndarray((y * 32767).astype("<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RTC_RATE, self._pts, fractions.Fraction(1, RTC_RATE)
        self._pts += RTC_FRAME
        return frame


class WebRTCLink:
    def __init__(self, base_url: str, always_on: bool, on_event: Callable[[float, dict], None],
                 on_audio: Callable[[float, float], None]) -> None:
        self.base = base_url.replace("ws", "http", 1).removesuffix("/v1")
        check_loopback(self.base)
        self.on_event = on_event
        self.on_audio = on_audio
        self.track = _MicTrack()
        self.mic = Mic(self.track.chunks.put_nowait, 20, True)  # a track always sends: silence when idle
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.jitter_s = JITTER_S
        self._created: asyncio.Future | None = None
        self._tasks: list[asyncio.Task] = []

    async def open(self, timeout_s: float) -> dict:
        _loopback_only()
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never a public STUN server
        pc.addTrack(self.track)
        self.channel = pc.createDataChannel("oai-events")
        self._created = asyncio.get_running_loop().create_future()
        self.channel.on("message", self._message)
        pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._listen(track))))
        pc.on("connectionstatechange", self._state)
        await pc.setLocalDescription(await pc.createOffer())  # candidates gathered inside: no trickle
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            r = await http.post(self.base + "/v1/realtime/calls", content=pc.localDescription.sdp,
                                headers={"Content-Type": "application/sdp"})
        if r.status_code != 201:
            await pc.close()
            try:
                err = r.json().get("error") or {}
            except ValueError:
                err = {}
            raise Rejected(err.get("code") or f"http_{r.status_code}", err.get("message") or r.text[:200])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        return await asyncio.wait_for(self._created, timeout_s)

    def _message(self, message: str) -> None:
        now = time.monotonic()
        event = json.loads(message)
        if self._created is not None and not self._created.done() and event.get("type") == "session.created":
            self._created.set_result(event)
        self.on_event(now, event)

    def _state(self) -> None:
        if self.pc.connectionState in ("failed", "closed") and not self.closed.is_set():
            self.close_reason = f"peer connection {self.pc.connectionState}"
            self.closed.set()

    async def _listen(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            x = frame.to_ndarray()
            if np.abs(x).max() / 32768 >= SILENT_PEAK:
                self.on_audio(now, frame.samples / frame.sample_rate)

    async def send(self, event: dict) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps(event))

    async def close(self) -> None:
        await self.mic.stop()
        self.closed.set()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            self.track.stop()
