"""GET /v1/realtime: the OpenAI Realtime session over a WebSocket.

admit (auth before anything else; a slot only for an authenticated client) -> pump client events into
the RealtimeAdapter and the adapter's events out through a bounded outbox -> close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from server.realtime import CLOSE, ProtocolError, RealtimeAdapter, apply_session_update
from streaming.messages import EngineFull
from streaming.session import Session, SessionConfig

__all__ = ["Outbox", "router"]

log = logging.getLogger("lfm_audio.session")
router = APIRouter()

CLOSE_POLICY = 1008  # authentication failed
CLOSE_TRY_LATER = 1013  # server full
CLOSE_GOING_AWAY = 1001
CLOSE_ERROR = 1011
OUTBOX_LIMIT = 4096  # events; beyond it the oldest audio deltas are dropped (a client that stopped reading)


class Outbox:
    """A bounded, non-blocking queue of outgoing events. The event loop never waits on a slow client: when
    full, the oldest audio delta goes (and is counted), never a control event."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.items: deque[dict] = deque()
        self.limit = limit
        self.ready = asyncio.Event()
        self.dropped = 0

    def put(self, event: dict) -> None:
        self.items.append(event)
        if len(self.items) > self.limit:
            for i, e in enumerate(self.items):
                if e.get("type") == "response.output_audio.delta":
                    del self.items[i]
                    self.dropped += 1
                    break
        self.ready.set()

    async def get(self) -> dict:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()


class Connection:
    """One WebSocket client: its adapter, session and writer task."""

    def __init__(self, ws: WebSocket, state) -> None:
        self.ws, self.state = ws, state
        self.outbox = Outbox()
        self.adapter = RealtimeAdapter(self.outbox.put, model=state.model_name,
                                       max_event_bytes=state.settings.max_event_bytes, on_response=self.observe)
        self.session: Session | None = None
        self.opened = time.monotonic()
        self.turns = 0

    @property
    def busy(self) -> bool:
        return self.session is not None and self.session.response is not None

    def observe(self, r) -> None:
        """Metrics and one log line per turn."""
        self.turns += 1
        m = self.state.metrics
        ttfa_commit = r.first_audio - r.committed if r.first_audio and r.committed else None
        ttfa_speech = r.first_audio - r.speech_end if r.first_audio and r.speech_end else None
        ttft = r.first_text - r.committed if r.first_text and r.committed else None
        rtf = (time.perf_counter() - r.started) / r.audio_seconds if r.audio_seconds else None
        m.response(ttfa_speech_end_s=ttfa_speech, ttfa_commit_s=ttfa_commit, ttft_s=ttft, rtf=rtf)
        m.audio_out(r.audio_seconds)
        if r.status == "cancelled" and r.reason == "turn_detected":
            m.interruption()
        log.info(json.dumps({"event": "turn", "session": self.adapter.session_id, "response": r.id,
                             "status": r.status, "reason": r.reason, "ttfa_speech_end_s": ttfa_speech,
                             "ttfa_commit_s": ttfa_commit, "ttft_s": ttft, "audio_s": round(r.audio_seconds, 3),
                             "rtf": rtf, "cached_positions": r.usage.cached_positions,
                             "input_positions": r.usage.input_positions}))

    async def writer(self) -> None:
        while True:
            event = await self.outbox.get()
            if event is CLOSE:  # the session failed: close once what came before it is out
                await self.close("session failed", CLOSE_ERROR)
                return
            await self.ws.send_text(json.dumps(event))

    async def close(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        if self.session is not None:
            self.session.close()
        with contextlib.suppress(RuntimeError):  # already closed
            await self.ws.close(code=code, reason=reason[:120])


async def _refuse(ws: WebSocket, subprotocol: str | None, code: str, message: str, close_code: int) -> None:
    await ws.accept(subprotocol=subprotocol)
    event = {"type": "error", "event_id": "event_refused",
             "error": {"type": "invalid_request_error", "code": code, "message": message}}
    await ws.send_text(json.dumps(event))
    await ws.close(code=close_code, reason=message[:120])


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    state = ws.app.state.lfm
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    auth = state.auth.authenticate(ws.headers.get("authorization"), offered)
    subprotocol = "realtime" if "realtime" in offered else None
    if not auth.ok:
        state.metrics.rejected("auth")
        return await _refuse(ws, subprotocol, "invalid_api_key", f"authentication failed: {auth.reason}",
                             CLOSE_POLICY)
    if not state.accepting or state.engine is None or not state.engine.ready:
        state.metrics.rejected("not_ready")
        return await _refuse(ws, subprotocol, "server_unavailable", "the server is not ready; try again later",
                             CLOSE_TRY_LATER)
    conn = Connection(ws, state)
    settings = state.settings
    config = SessionConfig()
    try:
        if auth.session:  # the session config a client secret was minted with
            config = apply_session_update(config, auth.session)
        session = Session(state.engine, conn.adapter.on_session_event, config,
                          max_buffer_s=settings.max_input_buffer_s, max_output_tokens=settings.max_response_tokens)
    except EngineFull as e:
        state.metrics.rejected("full")
        return await _refuse(ws, subprotocol, "server_full", f"{e}; try again later", CLOSE_TRY_LATER)
    except ProtocolError as e:
        return await _refuse(ws, subprotocol, e.code, e.message, CLOSE_POLICY)
    await ws.accept(subprotocol=subprotocol)
    conn.session = session
    state.sessions.add(conn)
    state.metrics.session_started("websocket")
    log.info(json.dumps({"event": "session_start", "session": conn.adapter.session_id, "transport": "websocket",
                         "client": f"{ws.client.host}:{ws.client.port}" if ws.client else None}))
    conn.adapter.start(session)
    writer = asyncio.create_task(conn.writer())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is not None:
                conn.adapter.handle_text(message["text"])
            elif message.get("bytes") is not None:
                conn.adapter.handle_binary(message["bytes"])
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("session %s failed", conn.adapter.session_id)
        state.metrics.error("session")
    finally:
        writer.cancel()
        session.close()
        state.sessions.discard(conn)
        duration = time.monotonic() - conn.opened
        state.metrics.session_ended("websocket", duration)
        state.metrics.audio_in(session.stats["input_audio_s"])
        log.info(json.dumps({"event": "session_end", "session": conn.adapter.session_id, "duration_s":
                             round(duration, 3), "turns": conn.turns, "dropped_audio_events": conn.outbox.dropped}))
        with contextlib.suppress(RuntimeError):
            await ws.close()
