"""What every Realtime connection does, whatever its transport: admission (auth before anything, then a
slot), the session and its adapter, metrics and one structured log line per session start, turn and end.
The WebSocket and WebRTC routes only move bytes between their wire and a `Connection`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from server import validation
from server.audio_out import AudioOutFactory
from server.deps import authenticate
from server.errors import CLOSE_POLICY, CLOSE_TRY_LATER, Refused
from server.realtime import ErrorSent, ProtocolError, RealtimeAdapter, apply_session_update
from streaming.audio import AudioFormat
from streaming.messages import EngineFull
from streaming.session import Response, Session, SessionConfig

__all__ = ["Connection"]

log = logging.getLogger("lfm_audio.session")


class Connection:
    """`audio_out` makes where the speech goes; `media_input` is the transport's own input format, when it has
    one (WebRTC's decoded Opus), which then takes the place of the session's audio.input.format."""

    def __init__(self, state, transport: str, send: Callable[[dict], None], audio_out: AudioOutFactory,
                 media_input: AudioFormat | None = None) -> None:
        self.state, self.transport = state, transport
        self.media_input = media_input
        self.adapter = RealtimeAdapter(send, audio_out, model=state.model_name,
                                       max_event_bytes=state.settings.max_event_bytes, on_response=self.observe,
                                       on_error=self.error_sent)
        self.session: Session | None = None
        self.opened = time.monotonic()
        self.turns = 0
        self._audio_in_counted = 0.0  # of the session's input audio, seconds already in the metric
        self.close_hook: Callable[[str], object] | None = None  # set by the transport
        self.who: str | None = None  # whom the per-key limits charge this session to, while it holds a count

    def admit(self, authorization: str | None, subprotocols: list[str]) -> dict | None:
        """Authenticate; returns the session config carried by a client secret, or raises Refused."""
        auth = authenticate(self.state, authorization, subprotocols)
        engine = self.state.engine
        if not self.state.accepting or engine is None or not engine.ready:
            self.state.metrics.rejected("not_ready")
            raise Refused(503, "server_unavailable", "the server is not ready; try again later", CLOSE_TRY_LATER)
        if auth.who is not None:
            try:
                self.state.limits.acquire(auth.who)
            except Refused:
                self.state.metrics.rejected("limit")
                raise
            self.who = auth.who
        return auth.session

    def open(self, secret_session: dict | None = None, update: dict | None = None) -> None:
        """Take a slot and start the session (session.created goes out). Raises Refused."""
        settings = self.state.settings
        config = SessionConfig()
        try:
            for extra in (secret_session, update):
                if extra:
                    extra, problems = validation.session_update(extra)
                    if problems:
                        raise ProtocolError(*problems[0])
                    config = apply_session_update(config, extra)
            self.session = Session(self.state.engine, self.adapter.on_session_event, config,
                                   max_buffer_s=settings.max_input_buffer_s,
                                   max_output_tokens=settings.max_response_tokens, media_input=self.media_input)
        except EngineFull as e:
            self._release()
            self.state.metrics.rejected("full")
            raise Refused(503, "server_full", f"{e}; try again later", CLOSE_TRY_LATER) from None
        except ProtocolError as e:
            self._release()
            raise Refused(400, e.code, e.message, CLOSE_POLICY) from None
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
        m.response(ttfa_speech_end_s=ttfa_speech, ttfa_commit_s=ttfa_commit, ttft_s=ttft, rtf=rtf,
                   underruns=r.playout.underruns, gap_s=r.playout.gap_s)
        m.audio_out(r.audio_seconds)
        self._count_audio_in()
        if r.status == "cancelled" and r.reason == "turn_detected":
            m.interruption()
        log.info(json.dumps({"event": "turn", "session": self.adapter.session_id, "response": r.id,
                             "status": r.status, "reason": r.reason, "ttfa_speech_end_s": _round(ttfa_speech),
                             "ttfa_commit_s": _round(ttfa_commit), "ttft_s": _round(ttft),
                             "audio_s": round(r.audio_seconds, 3), "rtf": _round(rtf),
                             "underruns": r.playout.underruns, "gap_s": round(r.playout.gap_s, 3),
                             "cached_positions": r.usage.cached_positions,
                             "input_positions": r.usage.input_positions}))

    def error_sent(self, e: ErrorSent) -> None:
        """One log line and a count per error event sent: what a client was refused shows on the server."""
        self.state.metrics.error_event(e.code)
        log.info(json.dumps({"event": "error_sent", "session": self.adapter.session_id, "code": e.code,
                             "param": e.param, "client_event_type": e.client_event_type,
                             "client_event_id": e.client_event_id, "message": e.message}))

    def _release(self) -> None:
        if self.who is not None:
            self.state.limits.release(self.who)
            self.who = None

    def finish(self, **extra: object) -> None:
        """The transport is gone: free the slot, count, log."""
        self._release()
        if self.session is None or self not in self.state.sessions:
            return
        self.session.close()
        self.state.sessions.discard(self)
        duration = time.monotonic() - self.opened
        self.state.metrics.session_ended(self.transport, duration)
        self._count_audio_in()
        log.info(json.dumps({"event": "session_end", "session": self.adapter.session_id, "transport":
                             self.transport, "duration_s": round(duration, 3), "turns": self.turns, **extra}))

    def _count_audio_in(self) -> None:
        """Input audio counted as turns go by (not only at the end: a long session's rate shows as it runs)."""
        seconds = self.session.input_audio_s - self._audio_in_counted
        if seconds > 0:
            self.state.metrics.audio_in(seconds)
            self._audio_in_counted += seconds

    async def close(self, reason: str) -> None:
        """Server-side close (shutdown)."""
        if self.close_hook is not None:
            await self.close_hook(reason)
        self.finish()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
