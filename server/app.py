"""The FastAPI application, assembled in a lifespan: load the checkpoint, warm up, start the engine; on
shutdown drain (server.drain: stop accepting, let running responses finish up to a grace period, close the
sessions), then stop the engine. Nothing touches the model at import time.

`create_app(settings, load=...)` is the seam for in-process tests: `load(settings) -> Loaded` replaces the
checkpoint loading, so that a test hands the app an engine it built (the real one on a checkpoint it already
has, or any object with the same interface: start, stop, ready, open, config.max_sessions, slots_free, stats).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from server.auth import Auth
from server.errors import ApiError, api_error_response, http_error_response, invalid_request_response
from server.metrics import Metrics
from server.security import KeyLimits, SecurityHeaders
from server.settings import Settings

__all__ = ["AppState", "Loaded", "create_app", "engine_for", "load_engine"]

log = logging.getLogger("lfm_audio")
WEB_CLIENT = Path(__file__).resolve().parents[1] / "web_client"
VERSION = "0.1.0"


@dataclass
class AppState:
    settings: Settings
    auth: Auth
    metrics: Metrics | None = None
    limits: KeyLimits | None = None  # server.security: per-key session limits
    engine: object | None = None  # streaming.engine.Engine, once loaded
    model_name: str = ""
    random_weights: bool = False
    warmed_up: bool = False
    accepting: bool = True
    drain: asyncio.Task | None = None  # server.drain.start: once shutting down
    sessions: set = field(default_factory=set)  # live transport connections (each has an async close())
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Loaded:
    """What the lifespan serves: an engine, not started yet, and what the server says about it."""

    engine: object  # streaming.engine.Engine, or an object with its interface (see the module docstring)
    model_name: str
    decoder: str  # the speech detokenizer's name (a metrics label)
    random_weights: bool = False
    source: str = ""  # where the weights came from (the random-weights warning names it)


def load_engine(settings: Settings) -> Loaded:
    """The checkpoint the settings name (default: the embedded tiny random one) and an engine on it."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.random_checkpoint import embedded_default

    source = settings.model or embedded_default()
    dtype = getattr(torch, settings.dtype) if settings.dtype else None
    if not settings.runner_process:
        return engine_for(load_checkpoint(source, device=settings.device, dtype=dtype, weights=settings.weights),
                          settings)
    from models.checkpoint import load_header
    from streaming.runner import model_threads
    from streaming.worker import ProcessRunner, RunnerSpec

    header = load_header(source, device=settings.device, dtype=dtype, weights=settings.weights)
    config = engine_config(settings)
    runner = ProcessRunner(RunnerSpec(  # it loads the weights while this process builds the engine
        str(header.directory), settings.device, settings.dtype, settings.weights, config.max_sessions,
        config.max_context, config.decoder, config.compile, config.static_batch,
        model_threads(header.config.lfm.hidden_size, config.threads)))
    try:
        return _loaded(header, settings, runner)
    except BaseException:
        runner.close()
        raise


def engine_config(settings: Settings):
    from streaming.engine import EngineConfig

    return EngineConfig(max_sessions=settings.max_sessions, max_context=settings.max_context,
                        prefill_budget=settings.prefill_budget, decoder=settings.decoder, compile=settings.compile,
                        speculative_start=settings.speculative_start)


def engine_for(ckpt, settings: Settings) -> Loaded:
    """An engine, sized by the settings, on a loaded checkpoint (models.checkpoint.Checkpoint), in this process."""
    return _loaded(ckpt, settings, None)


def _loaded(ckpt, settings: Settings, runner) -> Loaded:
    from streaming.engine import Engine

    engine = Engine(ckpt, engine_config(settings), runner=runner)
    return Loaded(engine, ckpt.directory.name, engine.runner.decoder_name, ckpt.random is not None,
                  str(ckpt.directory))


def _warm_up(engine) -> None:
    """One short response on a throwaway session: first-call allocations, compilation if enabled."""
    import numpy as np

    from models.defaults import CHAT_PROMPT, INPUT_RATE
    from streaming.collector import EventCollector, SessionFailedError
    from streaming.messages import ResponseRequest

    heard = EventCollector()
    session = engine.open(heard)
    try:
        session.add_item("sys", "system", text=CHAT_PROMPT)
        session.add_item("u", "user", audio=np.zeros(INPUT_RATE, np.float32))  # a second of silence
        session.respond(ResponseRequest("warmup", "warmup_item", max_tokens=16))
        heard.wait("warmup", 600)
    except SessionFailedError as e:
        raise RuntimeError(f"warm-up failed: {e}") from None
    except TimeoutError:  # slow, not broken: serve anyway (readiness watches the engine from now on)
        log.warning("the warm-up response did not finish within 600 s")
    finally:
        session.close()


async def _watch_loop(metrics: Metrics, period: float = 0.05) -> None:
    """Measure how late the event loop wakes up: the model never runs on it, so this stays small."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        metrics.event_loop_lag(time.perf_counter() - t0 - period)


def create_app(settings: Settings | None = None, *, load: Callable[[Settings], Loaded] = load_engine) -> FastAPI:
    from server import drain, routes_ops, routes_rest, routes_webrtc, routes_ws

    settings = settings or Settings()
    state = AppState(settings, Auth(settings), limits=KeyLimits(settings.max_sessions_per_key,
                                                                 settings.new_sessions_per_minute))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.auth.open:
            log.warning("NO API KEYS CONFIGURED: anyone who can reach %s:%s may use this server "
                        "(set LFM_AUDIO_API_KEYS)", settings.host, settings.port)
        t0 = time.perf_counter()
        loaded = await asyncio.to_thread(load, settings)
        engine = state.engine = loaded.engine
        state.model_name, state.random_weights = loaded.model_name, loaded.random_weights
        state.metrics = Metrics({"version": VERSION, "model": state.model_name, "decoder": loaded.decoder,
                                 "device": settings.device})
        if (runner_pid := getattr(engine.runner, "pid", None)) is not None:
            state.metrics.watch_runner_process(runner_pid)
        if state.random_weights:
            log.warning("the checkpoint %s has RANDOM WEIGHTS: the model's speech is noise. Serve a real "
                        "LFM2-Audio checkpoint with --model DIR or a Hub id.", loaded.source)
        restore_host_addresses = routes_webrtc.use_host_addresses(settings.webrtc_host_addresses)
        # The engine thread runs Python between its tensor ops: hand the GIL back to the event loop more
        # often than the default 5 ms, so that the loop is never late by more than a few milliseconds.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.001)
        engine.start()
        lag_task = asyncio.create_task(_watch_loop(state.metrics))
        await asyncio.to_thread(_warm_up, engine)
        state.warmed_up = True
        log.info("ready in %.1f s: model %s, decoder %s, %d slots", time.perf_counter() - t0, state.model_name,
                 loaded.decoder, settings.max_sessions)
        yield
        await drain.start(state)  # done already when a signal started it (server.drain.DrainingServer)
        lag_task.cancel()
        engine.stop()
        restore_host_addresses()
        sys.setswitchinterval(switch_interval)  # process-wide: as it was (several apps may run in one process)

    app = FastAPI(title="lfm-audio", version=VERSION, lifespan=lifespan)
    app.state.lfm = state
    app.add_exception_handler(ApiError, api_error_response)
    app.add_exception_handler(RequestValidationError, invalid_request_response)
    app.add_exception_handler(HTTPException, http_error_response)
    app.add_middleware(drain.RefuseUpgradesWhileDraining, state=state)
    app.add_middleware(SecurityHeaders)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.include_router(routes_ops.router)
    app.include_router(routes_rest.router)
    app.include_router(routes_ws.router)
    app.include_router(routes_webrtc.router)
    if WEB_CLIENT.is_dir():
        app.mount("/", StaticFiles(directory=WEB_CLIENT, html=True), name="web_client")
    return app
