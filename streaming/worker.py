"""The runner in a process of its own: the model work off the server's interpreter.

Served in one process, every tensor op of a decode step hands the GIL back and waits for it again while
the event loop parses, resamples and frames the clients' audio: steps measured 2.4x slower served than
alone on 2 cores (docs/loadtests/report.md). Here the engine thread keeps the scheduling and the
conversations, and each iteration's plan goes to a child process that owns the weights and every tensor
(streaming/runner.py), and its result comes back: one round trip per iteration, during which the engine
thread holds no GIL.

The mechanism is multiprocessing's: a spawned child (no fork of a threaded server) and a Pipe carrying
pickled plans and results (Python values, NumPy arrays and CPU tensors, copied by value). The child
loads the checkpoint itself, so the weights are in memory once, there.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

from streaming.runner import StepPlan, StepResult

__all__ = ["ProcessRunner", "RunnerProcessError", "RunnerSpec"]

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often a wait for the child checks that it is still alive


class RunnerProcessError(RuntimeError):
    """The runner's process failed to start or died."""


@dataclass(frozen=True)
class RunnerSpec:
    """What the child needs to build the runner: the checkpoint to load and the runner's arguments."""

    model: str  # a checkpoint directory (resolved by the parent)
    device: str = "cpu"
    dtype: str | None = None  # a torch dtype's name; None: the checkpoint loader's default for the device
    weights: str = "dense"
    slots: int = 1
    capacity: int = 1
    decoder: str = "auto"
    compile: bool = False
    static: bool = False
    threads: int | None = None  # torch threads in the child; None: torch's default


class ProcessRunner:
    """streaming.runner.Runner's interface (step, calibrate, decoder_name), run by a child process."""

    # Served steps over calibrated ones (streaming/engine.py's admission): no GIL to share, only the machine's
    # cores with the event loop and the clients. Measured on 2 cores with the load generator on the same machine.
    serving_overhead = 1.5

    def __init__(self, spec: RunnerSpec, start_timeout_s: float = 600.0) -> None:
        """Starts the child and returns: it loads while the caller builds the rest (`wait_ready` joins)."""
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(spec, child), name="lfm-audio-runner", daemon=True)
        self._proc.start()
        child.close()
        self._start_timeout_s = start_timeout_s
        self._decoder_name: str | None = None
        self._lock = threading.Lock()  # one request and its answer at a time on the pipe (any thread may wait)

    def wait_ready(self) -> None:
        """Until the child has loaded the checkpoint; RunnerProcessError if it could not."""
        with self._lock:
            if self._decoder_name is None:
                self._decoder_name = self._exchange(None, timeout_s=self._start_timeout_s, what="start")

    @property
    def decoder_name(self) -> str:
        self.wait_ready()
        return self._decoder_name

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def step(self, plan: StepPlan) -> StepResult:
        self.wait_ready()
        return self._call(("step", plan), what="step")

    def calibrate(self, batches: list[int], repeats: int = 3) -> list[tuple[int, float]]:
        self.wait_ready()
        return self._call(("calibrate", batches, repeats), what="calibration")

    def close(self, timeout_s: float = 5.0) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send_bytes(pickle.dumps(None))
            self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout_s)
        self._conn.close()

    def _call(self, request: tuple, *, what: str):
        with self._lock:
            return self._exchange(request, what=what)

    def _exchange(self, request: tuple | None, *, what: str, timeout_s: float | None = None):
        """Send a request (None: only wait for the start-up message) and wait for its answer; the child's
        own exceptions come back as RunnerProcessError, as does its death."""
        try:
            if request is not None:
                self._conn.send_bytes(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
            waited = 0.0
            while not self._conn.poll(POLL_S):
                waited += POLL_S
                if not self._proc.is_alive():
                    raise RunnerProcessError(f"the runner process died during {what} "
                                             f"(exit code {self._proc.exitcode})")
                if timeout_s is not None and waited >= timeout_s:
                    raise RunnerProcessError(f"the runner process did not answer within {timeout_s:g} s ({what})")
            ok, value = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):  # the pipe broke: the child is gone, or going
            self._proc.join(POLL_S)
            raise RunnerProcessError(f"the runner process died during {what} (exit code {self._proc.exitcode})") \
                from None
        if not ok:
            raise RunnerProcessError(f"the runner process failed ({what}):\n{value}")
        return value


def _serve(spec: RunnerSpec, conn: Connection) -> None:
    """The child: load, say ready (the decoder's name), then answer requests until told to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s %(name)s: %(message)s")
    try:
        runner = _build(spec)
        _answer(conn, True, runner.decoder_name)
    except BaseException:
        _answer(conn, False, traceback.format_exc())
        return
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            os._exit(0)  # nothing to flush, and tearing the interpreter down (torch and all) takes seconds
        try:
            value = runner.step(request[1]) if request[0] == "step" else runner.calibrate(request[1], request[2])
        except BaseException:  # the runner catches a session's failures itself: this is the runner's own bug
            _answer(conn, False, traceback.format_exc())
            return
        _answer(conn, True, value)


def _answer(conn: Connection, ok: bool, value: object) -> None:
    conn.send_bytes(pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL))


def _build(spec: RunnerSpec):
    import torch

    from models.checkpoint import load_checkpoint
    from streaming.runner import Runner

    if spec.threads:
        torch.set_num_threads(spec.threads)
    ckpt = load_checkpoint(spec.model, device=spec.device, dtype=getattr(torch, spec.dtype) if spec.dtype else None,
                           weights=spec.weights)
    return Runner(ckpt, slots=spec.slots, capacity=spec.capacity, decoder=spec.decoder, compile=spec.compile,
                  static=spec.static)
