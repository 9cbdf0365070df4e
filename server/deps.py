"""FastAPI dependencies: the app's state, and authentication. REST routes declare `State` and `Authorized`;
the WebSocket and WebRTC routes call `authenticate` (the same check) before they take a slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Header
from starlette.requests import HTTPConnection

from server.app import AppState
from server.auth import AuthResult
from server.errors import CLOSE_POLICY, Refused

__all__ = ["Authorized", "State", "authenticate", "authorize", "get_state"]


def get_state(conn: HTTPConnection) -> AppState:
    """The state create_app made for this app (HTTP and WebSocket alike)."""
    return conn.app.state.lfm


State = Annotated[AppState, Depends(get_state)]


def authenticate(state: AppState, authorization: str | None, subprotocols: Sequence[str] = ()) -> AuthResult:
    """`Authorization: Bearer <api key | client secret>` or the key subprotocol; raises Refused (counted)."""
    result = state.auth.authenticate(authorization, subprotocols)
    if not result.ok:
        state.metrics.rejected("auth")
        raise Refused(401, "invalid_api_key", f"authentication failed: {result.reason}", CLOSE_POLICY)
    return result


def authorize(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    """The REST routes' check (as a dependency, it runs before the body is validated)."""
    authenticate(state, authorization)


Authorized = Depends(authorize)  # for a route's `dependencies=[Authorized]`
