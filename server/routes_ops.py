"""Operations: liveness, readiness, Prometheus metrics. The probes are open (orchestrators call them without
credentials); /metrics needs an API key when keys are configured, unless the `metrics_public` setting opens it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse

from server.deps import State, authenticate

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the process answers. No dependencies."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Readiness: loaded, warmed up, engine alive and not stuck. 503 otherwise."""
    engine = state.engine
    ready = bool(engine is not None and state.warmed_up and engine.ready and state.accepting)
    body = {"status": "ready" if ready else "not ready", "model": state.model_name,
            "random_weights": state.random_weights}
    if engine is not None:
        total = engine.config.max_sessions
        body["slots"] = {"used": total - engine.slots_free, "total": total}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(state: State, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text format. `Authorization: Bearer <api key>` unless the server's metrics are public."""
    if state.metrics is None:  # still loading (says nothing more than /readyz does)
        return Response("starting\n", status_code=503, media_type="text/plain")
    if not state.settings.metrics_public:
        authenticate(state, authorization)  # raises Refused (401 with the error body); an open server passes
    state.metrics.update_from(state.engine.stats())
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
