"""Who may do how much, and what a browser may do with our pages: per-key session limits, the Origin check of
browser WebSockets, and the security headers of every HTTP response (a CSP the demo works under).

Keys are never kept or logged here: a key is known by `key_id`, a short hash of it.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import CLOSE_POLICY, CLOSE_TRY_LATER, Refused

__all__ = ["CSP", "KeyLimits", "SecurityHeaders", "check_origin", "key_id"]

WINDOW_S = 60.0  # new sessions are counted over the last minute
# The demo is same-origin scripts and styles only (no inline code); it talks to its own host over ws(s) and
# fetch; its audio worklet is a module from the same origin. Nothing may frame it.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "media-src 'self' blob:; worker-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cross-origin-opener-policy", b"same-origin")]


def key_id(key: str) -> str:
    """What logs, metrics and limits call a key: 12 hex digits of its SHA-256, never the key."""
    return "key_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class KeyLimits:
    """Per key: at most `max_sessions` open at once and `per_minute` new ones in any minute (None: no limit).
    `acquire` before a session takes a slot (raises Refused), `release` when it ends."""

    def __init__(self, max_sessions: int | None, per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions, self.per_minute, self._clock = max_sessions, per_minute, clock
        self._open: collections.Counter[str] = collections.Counter()
        self._starts: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()  # REST routes run on a thread pool

    def acquire(self, who: str, *, hold: bool = True) -> None:
        """Count one new session for `who` (and hold it open unless `hold` is False: a client secret minted)."""
        now = self._clock()
        with self._lock:
            if hold and self.max_sessions is not None and self._open[who] >= self.max_sessions:
                raise Refused(429, "session_limit_exceeded", f"this key has {self._open[who]} sessions open, its "
                              f"limit; close one first", CLOSE_TRY_LATER)
            starts = self._starts[who]
            while starts and starts[0] <= now - WINDOW_S:
                starts.popleft()
            if self.per_minute is not None and len(starts) >= self.per_minute:
                raise Refused(429, "rate_limit_exceeded", f"this key started {len(starts)} sessions in the last "
                              f"minute, its limit; try again in {starts[0] + WINDOW_S - now:.0f} s", CLOSE_TRY_LATER)
            starts.append(now)
            if hold:
                self._open[who] += 1

    def release(self, who: str) -> None:
        with self._lock:
            self._open[who] -= 1
            if self._open[who] <= 0:
                del self._open[who]

    def open_sessions(self, who: str) -> int:
        return self._open[who]


def _origin(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.scheme, parts.netloc


def check_origin(headers: Mapping[str, str], allowed: list[str]) -> None:
    """A browser's WebSocket upgrade (it always sends Origin) from another site is refused unless its origin is
    in `allowed` ("*": any). The page's own origin (Origin's host is the Host asked for) is always allowed, and
    so is a client that sends no Origin (SDKs, servers: no browser, no ambient credentials to abuse)."""
    origin = headers.get("origin")
    if origin is None or "*" in allowed:
        return
    parsed = _origin(origin)
    if parsed is not None and (parsed[1] == headers.get("host", "").lower()
                               or any(_origin(a) == parsed for a in allowed)):
        return
    raise Refused(403, "origin_not_allowed", f"connections from the origin {origin[:100]!r} are not allowed (the "
                  "server's allowed_origins setting)", CLOSE_POLICY)


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response (the demo page, its files, the API)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in HEADERS if h[0] not in present)]
            await send(message)

        return await self.app(scope, receive, send_with_headers)
