"""Who may connect: API keys, and short-lived client secrets (`ek_...`) minted for browsers.

A client secret is `ek_<payload>.<signature>`: the payload is base64url JSON {id, exp, session}, the signature
HMAC-SHA256 over `ek_<payload>` with the server's secret key. Nothing is stored at mint time; the ids of redeemed
secrets are kept until they expire, so that each secret opens one session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from models.defaults import MAX_TTL_S, MIN_TTL_S
from server.security import key_id
from server.settings import Settings

__all__ = ["KEY_SUBPROTOCOL", "SECRET_PREFIX", "Auth", "AuthResult"]

SECRET_PREFIX = "ek_"
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # browsers cannot set headers on a WebSocket: the key rides here
MAX_SECRET_CHARS = 65_536  # refuse to hash arbitrarily large strings
OPEN = "open"  # on a server without keys, per-key limits count every client together
SESSION_TYPES = {"realtime": "realtime.session", "transcription": "realtime.transcription_session"}


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    reason: str | None = None  # why not, when not ok
    session: dict | None = None  # the config a client secret carries (never None for a client secret)
    subprotocol: str | None = None  # the WebSocket subprotocol to echo
    # whom per-key limits count (server.security.key_id); None: a client secret, counted when it was minted
    who: str | None = field(default=None, compare=False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    # Canonical only: a lenient decoder skips stray characters and reads "+" as "-", so that several strings
    # would pass for one secret.
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _digest(key: str) -> bytes:
    # compare fixed-length digests: comparing the keys themselves would leak their lengths
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Auth:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time, max_used: int = 100_000):
        self._keys = [_digest(k) for k in settings.api_keys]
        self._secret = settings.secret_key.encode() if settings.secret_key else secrets.token_bytes(32)
        self._ttl = settings.client_secret_ttl_s
        self._clock = clock
        self._max_used = max_used
        self._used: dict[str, int] = {}  # redeemed id -> its expiry
        self._expiries: list[tuple[int, str]] = []  # heap over the same entries, soonest first
        self._floor = 0  # secrets expiring at or before this are refused: their ids may have been evicted
        self._lock = threading.Lock()  # sync routes run on a thread pool

    @property
    def open(self) -> bool:
        """No API keys configured: anyone may connect."""
        return not self._keys

    def check_key(self, key: str) -> bool:
        """Constant time: compare against every key, without stopping at a match."""
        digest = _digest(key)
        ok = False
        for k in self._keys:
            ok |= hmac.compare_digest(digest, k)
        return ok

    # ---- client secrets
    def mint(self, session: dict | None = None, ttl_s: int | None = None) -> dict:
        """A client secret in the shape of OpenAI's `POST /v1/realtime/client_secrets` response."""
        ttl = self._ttl if ttl_s is None else ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
            raise ValueError(f"expires_after.seconds must be an integer from {MIN_TTL_S} to {MAX_TTL_S}, got {ttl!r}")
        if session is not None and not isinstance(session, dict):
            raise ValueError("session must be an object")
        session = {"type": "realtime", **(session or {})}
        if not isinstance(session["type"], str) or session["type"] not in SESSION_TYPES:
            raise ValueError(f"session.type must be one of {sorted(SESSION_TYPES)}, got {session['type']!r}")
        sid = secrets.token_urlsafe(12)
        exp = int(self._clock()) + ttl
        body = SECRET_PREFIX + _b64(json.dumps({"id": sid, "exp": exp, "session": session},
                                               separators=(",", ":")).encode())
        value = body + "." + _b64(self._sign(body))
        if len(value) > MAX_SECRET_CHARS:
            raise ValueError(f"the session config is too large for a client secret (limit {MAX_SECRET_CHARS} chars)")
        return {"value": value, "expires_at": exp,
                "session": {**session, "id": "sess_" + sid, "object": SESSION_TYPES[session["type"]]}}

    def redeem(self, value: str) -> dict | None:
        """The session config of a valid, unexpired, unused client secret (now used), else None."""
        return self._redeem(value)[0]

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).digest()

    def _redeem(self, value: str) -> tuple[dict | None, str | None]:
        invalid = None, "invalid client secret"
        if (not isinstance(value, str) or not value.startswith(SECRET_PREFIX) or len(value) > MAX_SECRET_CHARS
                or not value.isascii()):
            return invalid
        body, _, sig = value.rpartition(".")
        try:
            sig = _unb64(sig)
        except (binascii.Error, ValueError):
            return invalid
        if not hmac.compare_digest(sig, self._sign(body)):
            return invalid
        try:  # signed by us, so well formed unless the key leaked; check anyway
            claims = json.loads(_unb64(body[len(SECRET_PREFIX):]))
            sid, exp, session = claims["id"], claims["exp"], claims["session"]
        except (binascii.Error, ValueError, KeyError, TypeError):
            return invalid
        if not isinstance(sid, str) or not isinstance(exp, int) or not isinstance(session, dict):
            return invalid
        now = self._clock()
        with self._lock:
            while self._expiries and self._expiries[0][0] <= now:  # forget ids that can no longer be redeemed
                del self._used[heapq.heappop(self._expiries)[1]]
            if exp <= now or exp <= self._floor:
                return None, "expired client secret"
            if sid in self._used:
                return None, "client secret already used"
            if len(self._used) >= self._max_used:
                # Full: drop the soonest-expiring id and refuse everything expiring by then, so no id is reusable.
                old_exp, old_id = heapq.heappop(self._expiries)
                del self._used[old_id]
                self._floor = max(self._floor, old_exp)
                if exp <= self._floor:
                    return None, "expired client secret"
            self._used[sid] = exp
            heapq.heappush(self._expiries, (exp, sid))
        return session, None

    # ---- both transports
    def authenticate(self, authorization: str | None, subprotocols: Sequence[str] = ()) -> AuthResult:
        """Check `Authorization: Bearer <api key | ek_...>` or the `openai-insecure-api-key.<...>` subprotocol."""
        subprotocols = list(subprotocols or ())
        echo = "realtime" if "realtime" in subprotocols else None
        token = None
        if authorization:
            scheme, _, cred = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                token = cred.strip()
        if token is None:
            token = next((p[len(KEY_SUBPROTOCOL):] for p in subprotocols
                          if p.startswith(KEY_SUBPROTOCOL) and len(p) > len(KEY_SUBPROTOCOL)), None)
        if token is not None and token.startswith(SECRET_PREFIX):  # verified and used up even on an open server
            session, reason = self._redeem(token)
            return AuthResult(session is not None, reason, session, echo)
        if self.open:
            return AuthResult(True, None, None, echo, OPEN)
        if token is None:
            return AuthResult(False, "missing credentials", None, echo)
        if self.check_key(token):
            return AuthResult(True, None, None, echo, key_id(token))
        return AuthResult(False, "invalid api key", None, echo)
