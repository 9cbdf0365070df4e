"""GET /v1/realtime: the OpenAI Realtime session over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from server import security
from server.audio_out import EventAudioOut
from server.connection import Connection
from server.deps import State
from server.errors import Refused
from server.outbox import Outbox
from server.realtime import CLOSE

__all__ = ["router"]

router = APIRouter()
CLOSE_GOING_AWAY = 1001
CLOSE_ERROR = 1011
FLUSH_TIMEOUT_S = 5.0  # a server-side close waits this long at most for a client that stopped reading


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, state: State) -> None:
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    subprotocol = "realtime" if "realtime" in offered else None
    outbox = Outbox()
    conn = Connection(state, "websocket", outbox.put, EventAudioOut)
    try:
        security.check_origin(ws.headers, state.settings.allowed_origins + state.settings.cors_origins)
        secret_session = conn.admit(ws.headers.get("authorization"), offered)
        conn.open(secret_session)
    except Refused as r:  # nothing was allocated; say why, then close
        await ws.accept(subprotocol=subprotocol)
        await ws.send_text(json.dumps(r.event()))
        await ws.close(code=r.close_code, reason=r.message[:120])
        return
    await ws.accept(subprotocol=subprotocol)

    async def close(reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # closed already, or the client is gone
            await ws.close(code=code, reason=reason[:120])

    closing: list[str] = []  # the server's reason, once it closes the session (a drain)

    async def close_when_sent(reason: str) -> None:
        """The server ends the session: what is queued (a response's last events) goes out first."""
        closing.append(reason)
        outbox.put(CLOSE)
        await asyncio.wait({task}, timeout=FLUSH_TIMEOUT_S)
        await close(reason)

    conn.close_hook = close_when_sent

    async def writer() -> None:
        with contextlib.suppress(WebSocketDisconnect):  # the client is gone: the reader sees it and ends the session
            await write()

    async def write() -> None:
        while True:
            event = await outbox.get()
            if event is CLOSE:  # the session failed, or the server ends it: close once what came before is out
                await close(*((closing[0], CLOSE_GOING_AWAY) if closing else ("session failed", CLOSE_ERROR)))
                return
            await ws.send_text(json.dumps(event))

    task = asyncio.create_task(writer())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is not None:
                conn.adapter.handle_text(message["text"])
            elif message.get("bytes") is not None:
                conn.adapter.handle_binary(message["bytes"])
    except Exception:
        state.metrics.error("session")
        raise
    finally:
        task.cancel()
        conn.finish(dropped_audio_events=outbox.dropped)
        await close("bye")
