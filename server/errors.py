"""OpenAI's error object, built in one place for every route: REST errors, refused connections and the
Realtime `error` event all carry `{"type", "code", "message", "param", "event_id"}`."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

__all__ = [
    "CLOSE_POLICY", "CLOSE_TRY_LATER", "ApiError", "Refused", "api_error_response", "error_body",
    "http_error_response", "invalid_request_response",
]

CLOSE_POLICY = 1008  # WebSocket close code: authentication failed, or a bad session config
CLOSE_TRY_LATER = 1013  # WebSocket close code: server full or not ready
# the code of an HTTP error raised by Starlette or FastAPI themselves (not by our routes), by status
HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
              415: "unsupported_media_type"}


def error_body(code: str, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               event_id: str | None = None) -> dict:
    """The error object OpenAI sends, over REST (`{"error": ...}`) and in a Realtime `error` event."""
    return {"type": type_, "code": code, "message": message, "param": param, "event_id": event_id}


class ApiError(Exception):
    """An HTTP error with OpenAI's body. Routes raise it; the app renders it (api_error_response)."""

    def __init__(self, status: int, code: str, message: str, *, type_: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        type_ = type_ or ("server_error" if status >= 500 else "invalid_request_error")
        self.body = error_body(code, message, type_=type_, param=param)

    def response(self) -> JSONResponse:
        # 503 is "try again": the server is full or not ready yet
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse({"error": self.body}, self.status, headers=headers)


class Refused(ApiError):
    """A connection is not admitted: an HTTP error (REST, WebRTC) that is also an `error` event and a close
    code (WebSocket). Nothing has been allocated for it."""

    def __init__(self, status: int, code: str, message: str, close_code: int) -> None:
        super().__init__(status, code, message, type_="invalid_request_error")
        self.close_code = close_code

    def event(self) -> dict:
        return {"type": "error", "event_id": "event_refused", "error": self.body}


async def api_error_response(request: Request, exc: ApiError) -> JSONResponse:
    """The app's exception handler for ApiError."""
    return exc.response()


async def invalid_request_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request body or parameter that fails validation: OpenAI's 400 with the first field named, not
    FastAPI's 422 `{"detail": [...]}` (clients read `error`)."""
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")
    return ApiError(400, "invalid_value", message, param=param).response()


async def http_error_response(request: Request, exc: HTTPException) -> Response:
    """Starlette's and FastAPI's own HTTP errors (a body that does not parse, an unknown path, a method the path
    does not take) in the same body as every other error, not `{"detail": ...}` (found by schemathesis)."""
    if exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = HTTP_CODES.get(exc.status_code, "server_error" if exc.status_code >= 500 else "invalid_request")
    body = error_body(code, str(exc.detail), type_="server_error" if exc.status_code >= 500 else
                      "invalid_request_error")
    return JSONResponse({"error": body}, exc.status_code, headers=exc.headers)  # headers: Allow on a 405
