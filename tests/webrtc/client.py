"""An aiortc client of `POST /v1/realtime/calls`, as a browser written for OpenAI's WebRTC flow would be: a mic
track, the `oai-events` data channel, the server's audio track. Every event is validated against the SDK schema."""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter, ValidationError

from server.webrtc_tracks import to_mono
from streaming.audio import float_to_pcm16

__all__ = ["Client", "Mic"]

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
RATE, FRAME = 48_000, 960


class Mic(MediaStreamTrack):
    """48 kHz mono in 20 ms frames, in real time: what say() queued, then silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue = np.zeros(0, np.float32)
        self._start: float | None = None
        self._timestamp = 0

    def say(self, x: np.ndarray) -> None:
        self.queue = np.concatenate([self.queue, x.astype(np.float32)])

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += FRAME
            await asyncio.sleep(max(0.0, self._start + self._timestamp / RATE - time.monotonic()))
        x = np.zeros(FRAME, np.float32)
        n = min(FRAME, len(self.queue))
        x[:n], self.queue = self.queue[:n], self.queue[n:]
        frame = AudioFrame.from_ndarray(float_to_pcm16(x).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._timestamp, fractions.Fraction(1, RATE)
        return frame


class Client:
    def __init__(self, channel: str | None = "oai-events") -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never a public STUN server
        self.mic = Mic()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel(channel) if channel else None
        self.events: list[dict] = []
        self.invalid: list[tuple[dict, ValidationError]] = []  # events that do not parse as the SDK's
        self.times: list[float] = []  # arrival time of each event
        self.audio: list[tuple[float, float, int]] = []  # (arrival time, RMS, sample rate) per received frame
        self.answer: httpx.Response | None = None
        self._news = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        if self.channel is not None:
            self.channel.on("message", self._on_message)
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._listen(track))))

    def _on_message(self, message: str) -> None:
        event = json.loads(message)
        try:
            SERVER_EVENT.validate_python(event)  # every event the server sends must parse
        except ValidationError as e:
            self.invalid.append((event, e))
        self.events.append(event)
        self.times.append(time.monotonic())
        self._news.set()

    async def _listen(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            x = to_mono(frame)
            self.audio.append((time.monotonic(), float(np.sqrt(np.mean(x ** 2))), frame.sample_rate))

    async def call(self, base: str, session: dict | None = None, token: str | None = None) -> httpx.Response:
        """Offer (candidates gathered first: no trickle), POST it, apply the answer when there is one."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=30) as http:
            if session is None:
                r = await http.post(base + "/v1/realtime/calls", content=sdp,
                                    headers={**headers, "Content-Type": "application/sdp"})
            else:
                r = await http.post(base + "/v1/realtime/calls", headers=headers,
                                    files={"sdp": (None, sdp), "session": (None, json.dumps(session))})
        self.answer = r
        if r.status_code == 201:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        return r

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def until(self, predicate, timeout: float = 60.0, start: int = 0) -> dict:
        """The first event from index `start` on that satisfies predicate, waiting for it."""
        async def wait() -> dict:
            i = start
            while True:
                assert not self.invalid, self.invalid
                while i < len(self.events):
                    if predicate(self.events[i]):
                        return self.events[i]
                    i += 1
                self._news.clear()
                await self._news.wait()

        return await asyncio.wait_for(wait(), timeout)

    def time_of(self, event: dict) -> float:
        return self.times[next(i for i, e in enumerate(self.events) if e is event)]

    def rms_between(self, t0: float, t1: float) -> np.ndarray:
        return np.array([rms for t, rms, _ in self.audio if t0 <= t <= t1])

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
