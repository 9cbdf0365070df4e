"""What every Realtime connection does, whatever its transport: admission (auth before anything, then a
slot), the session and its adapter, metrics and one structured log line per session start, turn and end.
The WebSocket and WebRTC routes only move bytes between their wire and a `Connection`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np

from server.realtime import ProtocolError, RealtimeAdapter, apply_session_update
from streaming.messages import EngineFull
from streaming.session import Response, Session, SessionConfig

__all__ = ["Connection", "Refused"]

log = logging.getLogger("lfm_audio.session")

CLOSE_POLICY = 1008  # authentication failed, or a bad session config
CLOSE_TRY_LATER = 1013  # server full or not ready


class Refused(Exception):
    """The connection is not admitted: an error event to send, and a WebSocket close code."""

    def __init__(self, code: str, message: str, close_code: int, http_status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code, self.http_status = code, message, close_code, http_status

    def event(self) -> dict:
        return {"type": "error", "event_id": "event_refused",
                "error": {"type": "invalid_request_error", "code": self.code, "message": self.message}}


class Connection:
    def __init__(self, state, transport: str, send: Callable[[dict], None],
                 play: Callable[[np.ndarray], None] | None = None) -> None:
        self.state, self.transport = state, transport
        self.adapter = RealtimeAdapter(send, model=state.model_name, max_event_bytes=state.settings.max_event_bytes,
                                       play=play, on_response=self.observe)
        self.session: Session | None = None
        self.opened = time.monotonic()
        self.turns = 0
        self.close_hook: Callable[[str], object] | None = None  # set by the transport

    def admit(self, authorization: str | None, subprotocols: list[str]) -> dict | None:
        """Authenticate; returns the session config carried by a client secret, or raises Refused."""
        auth = self.state.auth.authenticate(authorization, subprotocols)
        if not auth.ok:
            self.state.metrics.rejected("auth")
            raise Refused("invalid_api_key", f"authentication failed: {auth.reason}", CLOSE_POLICY, 401)
        engine = self.state.engine
        if not self.state.accepting or engine is None or not engine.ready:
            self.state.metrics.rejected("not_ready")
            raise Refused("server_unavailable", "the server is not ready; try again later", CLOSE_TRY_LATER, 503)
        return auth.session

    def open(self, secret_session: dict | None = None, update: dict | None = None) -> None:
        """Take a slot and start the session (session.created goes out). Raises Refused."""
        settings = self.state.settings
        config = SessionConfig()
        try:
            for extra in (secret_session, update):
                if extra:
                    config = apply_session_update(config, extra)
            self.session = Session(self.state.engine, self.adapter.on_session_event, config,
                                   max_buffer_s=settings.max_input_buffer_s,
                                   max_output_tokens=settings.max_response_tokens)
        except EngineFull as e:
            self.state.metrics.rejected("full")
            raise Refused("server_full", f"{e}; try again later", CLOSE_TRY_LATER, 503) from None
        except ProtocolError as e:
            raise Refused(e.code, e.message, CLOSE_POLICY, 400) from None
        self.state.sessions.add(self)
        self.state.metrics.session_started(self.transport)
        log.info(json.dumps({"event": "session_start", "session": self.adapter.session_id,
                             "transport": self.transport}))
        self.adapter.start(self.session)

    @property
    def busy(self) -> bool:
        return self.session is not None and self.session.response is not None

    def observe(self, r: Response) -> None:
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
                             "status": r.status, "reason": r.reason, "ttfa_speech_end_s": _round(ttfa_speech),
                             "ttfa_commit_s": _round(ttfa_commit), "ttft_s": _round(ttft),
                             "audio_s": round(r.audio_seconds, 3), "rtf": _round(rtf),
                             "cached_positions": r.usage.cached_positions,
                             "input_positions": r.usage.input_positions}))

    def finish(self, **extra: object) -> None:
        """The transport is gone: free the slot, count, log."""
        if self.session is None or self not in self.state.sessions:
            return
        self.session.close()
        self.state.sessions.discard(self)
        duration = time.monotonic() - self.opened
        self.state.metrics.session_ended(self.transport, duration)
        self.state.metrics.audio_in(self.session.input_audio_s)
        log.info(json.dumps({"event": "session_end", "session": self.adapter.session_id, "transport":
                             self.transport, "duration_s": round(duration, 3), "turns": self.turns, **extra}))

    async def close(self, reason: str) -> None:
        """Server-side close (shutdown)."""
        if self.close_hook is not None:
            await self.close_hook(reason)
        self.finish()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
