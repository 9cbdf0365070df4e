"""How a simulated user reaches the server: the Realtime events both ways plus a microphone paced in real time.

A link hands every server event to `on_event(arrival_time, event)`, and reply audio to `on_audio(arrival_time,
seconds)` when the audio travels outside the events (WebRTC). Refusals (`server_full`, close code 1013) raise
`Rejected` from `open()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from loadtests.clips import silence
from loadtests.scenario import WIRE_RATE

__all__ = ["LOOPBACK", "Rejected", "WebSocketLink", "check_loopback"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"{url}: the load generator only talks to loopback ({', '.join(LOOPBACK)})")


class Rejected(Exception):
    """The server refused the session (its `error` event's code, e.g. server_full)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Mic:
    """Sends `chunk_ms` of audio every `chunk_ms`, on a fixed schedule: what `say()` queued, else silence (a mic
    stays open). A push-to-talk mic sends nothing while nothing is queued. A late wake-up sends the chunks it owes
    at once, as a buffered mic would; `late_max_s` says how late the client's event loop ran."""

    def __init__(self, send: Callable[[bytes], object], chunk_ms: int, always_on: bool) -> None:
        self.send = send
        self.chunk_ms = chunk_ms
        self.always_on = always_on
        self.queue = bytearray()
        self.late_max_s = 0.0
        self._queued = 0  # bytes ever queued by say()
        self._sent = 0  # of those, bytes sent
        self._marks: list[tuple[int, asyncio.Future]] = []  # (resolve once _sent reaches this, wall-time future)
        self._task: asyncio.Task | None = None

    def say(self, pcm: bytes) -> tuple[asyncio.Future, asyncio.Future]:
        """Queue speech; returns futures of the wall times its first and its last sample were sent."""
        loop = asyncio.get_running_loop()
        began, ended = loop.create_future(), loop.create_future()
        self._marks += [(self._queued + 1, began), (self._queued + len(pcm), ended)]
        self._queued += len(pcm)
        self.queue += pcm
        return began, ended

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        chunk_bytes = 2 * WIRE_RATE * self.chunk_ms // 1000
        step = self.chunk_ms / 1000
        quiet = silence(self.chunk_ms)
        t0 = time.monotonic()
        k = 0
        while True:
            due = t0 + (k + 1) * step  # chunk k has been "captured" by then
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.late_max_s = max(self.late_max_s, -delay)
            k += 1
            if self.queue:
                chunk = bytes(self.queue[:chunk_bytes])
                del self.queue[:chunk_bytes]
                self._sent += len(chunk)
                result = self.send(chunk + quiet[len(chunk):])
                if asyncio.iscoroutine(result):
                    await result
                now = time.monotonic()
                for at, future in self._marks:
                    if at <= self._sent and not future.done():
                        future.set_result(now)
                self._marks = [m for m in self._marks if not m[1].done()]
            elif self.always_on:
                result = self.send(quiet)
                if asyncio.iscoroutine(result):
                    await result


class WebSocketLink:
    """`GET /v1/realtime`: JSON events both ways, mic audio as `input_audio_buffer.append`."""

    def __init__(self, url: str, chunk_ms: int, always_on: bool,
                 on_event: Callable[[float, dict], None]) -> None:
        check_loopback(url)
        self.url = url
        self.on_event = on_event
        self.mic = Mic(self._append, chunk_ms, always_on)
        self.jitter_s = 0.0  # the player starts with the first delta: the definition of an underrun
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._ws = None
        self._reader: asyncio.Task | None = None

    async def open(self, timeout_s: float) -> dict:
        """Connect and return `session.created`; raises Rejected when the server refuses."""
        self._ws = await connect(self.url, open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_TIMEOUT_S,
                                 subprotocols=["realtime"], max_size=None)
        first = json.loads(await asyncio.wait_for(self._ws.recv(), timeout_s))
        if first.get("type") == "error":
            err = first.get("error") or {}
            await self.close()
            raise Rejected(err.get("code") or "error", err.get("message") or "")
        self._reader = asyncio.create_task(self._read())
        return first

    async def send(self, event: dict) -> None:
        try:
            await self._ws.send(json.dumps(event))
        except ConnectionClosed:
            self._closed("connection closed while sending")

    async def _append(self, pcm: bytes) -> None:
        await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                now = time.monotonic()
                if isinstance(message, str):
                    self.on_event(now, json.loads(message))
            self._closed(f"closed by the server ({self._ws.close_code})")
        except ConnectionClosed as e:
            self._closed(f"connection lost ({e})")

    def _closed(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()

    async def close(self) -> None:
        await self.mic.stop()
        if self._ws is not None:
            self.closed.set()  # ours: not an error
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
