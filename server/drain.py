"""Draining: how a server stops without cutting anyone off mid-sentence. One place for both ways a shutdown
starts: a signal (SIGTERM/SIGINT, through `DrainingServer`, before uvicorn closes anything) and the end of the
app's lifespan (an app run some other way; after a signal's drain it finds the work done).

1. At once: /readyz answers 503 and new sessions are refused with `server_unavailable` (503 + Retry-After). A
   WebSocket upgrade gets that as its HTTP answer rather than an accepted socket that then closes, so that a
   proxy in front (deploy/nginx: `proxy_next_upstream ... http_503`) sends the client to another replica.
2. Every session that is not in a response is closed now (WebSocket code 1001, "server shutting down"); the
   others as soon as their response is done (on WebRTC: once its speech has gone out), so none starts another.
3. After `shutdown_grace_s`, what is still running is closed anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import ApiError

__all__ = ["CLOSE_REASON", "DrainingServer", "RefuseUpgradesWhileDraining", "responding", "start"]

log = logging.getLogger("lfm_audio")
CLOSE_REASON = "server shutting down"
POLL_S = 0.05  # how often the drain looks for responses that have finished


def start(state) -> asyncio.Task:
    """Begin draining (once: later calls return the same task). Refusals start before this returns."""
    if state.drain is None:
        state.accepting = False
        state.drain = asyncio.get_running_loop().create_task(_drain(state))
    return state.drain


def responding(conn) -> bool:
    """The session is generating a response, or (WebRTC) its speech is still queued on the paced media track."""
    if conn.busy:
        return True
    out = conn.adapter.audio_out  # only the WebRTC track (server.webrtc_tracks.SpeechTrack) holds speech back
    return getattr(out, "playing", None) is not None or bool(getattr(out, "frames", None))


async def _drain(state) -> None:
    grace_s = state.settings.shutdown_grace_s
    t0 = time.monotonic()
    deadline = t0 + grace_s
    log.info(json.dumps({"event": "drain_start", "sessions": len(state.sessions),
                         "responding": sum(responding(c) for c in state.sessions), "grace_s": grace_s}))
    closing: dict[object, asyncio.Task] = {}

    def close(conn) -> None:
        closing[conn] = asyncio.create_task(conn.close(CLOSE_REASON))

    while True:
        running = []
        for conn in [c for c in state.sessions if c not in closing]:
            if responding(conn):
                running.append(conn)
            else:
                close(conn)
        if not running or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    for conn in running:  # past the grace period
        close(conn)
    results = await asyncio.gather(*closing.values(), return_exceptions=True)
    for conn, result in zip(closing, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("closing session %s while draining: %r", conn.adapter.session_id, result)
    log.info(json.dumps({"event": "drain_end", "seconds": round(time.monotonic() - t0, 3),
                         "closed": len(closing), "cut_off": len(running)}))


class RefuseUpgradesWhileDraining:
    """ASGI middleware: while draining, a WebSocket upgrade is answered with HTTP 503, Retry-After and the error
    body, before any route runs. Without uvicorn's denial-response extension the route refuses it instead (an
    `error` event, then close code 1013)."""

    def __init__(self, app: ASGIApp, state) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "websocket" or self.state.drain is None
                or "websocket.http.response" not in scope.get("extensions", {})):
            await self.app(scope, receive, send)
            return
        if self.state.metrics is not None:
            self.state.metrics.rejected("not_ready")
        refusal = ApiError(503, "server_unavailable", "the server is shutting down; try again later").response()
        await refusal(scope, receive, send)  # starlette sends it as websocket.http.response.*


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that the first SIGTERM or SIGINT drains (above) before uvicorn closes anything:
    uvicorn itself would close every WebSocket at once (code 1012). A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self.state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # the second signal: no more waiting
            super().handle_exit(sig, frame)
            self.force_exit = True
            return
        if not self.started or self.should_exit or self._loop is None or self._loop.is_closed():
            super().handle_exit(sig, frame)  # still starting up, or already stopping: uvicorn's own way
            return
        self._draining = True
        log.info("%s: draining, then stopping (again to stop at once)", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._begin, sig)  # a signal handler: get onto the loop first

    def _begin(self, sig: int) -> None:
        start(self.state).add_done_callback(lambda _: uvicorn.Server.handle_exit(self, sig, None))
