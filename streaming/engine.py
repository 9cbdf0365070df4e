"""The serving engine: one thread owns the model and `max_sessions` slots, and batches every generating
session into one decode step per iteration.

Sessions talk to it only through `EngineSession` (streaming/handle.py: the conversation, edited under
its lock, and commands queued here) and receive events through the sink they gave at `open`, called on
the engine thread (a server hops them to its event loop). A slot keeps its conversation and backbone
state across turns, so a new turn prefills only what is new.

One iteration: drain the commands -> schedule (streaming/scheduler.py decides who prefills and who
decodes; streaming/slots.py turns that into the runner's plan) -> run it (streaming/runner.py, every
tensor) -> update the responses from the result (streaming/response.py) -> fan the events out, once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch

from models.checkpoint import Checkpoint, CheckpointHeader
from models.defaults import FRAME_S, MAX_CONTEXT, MAX_SESSIONS, PREFILL_BUDGET, SPECULATIVE_START
from streaming.handle import EngineSession
from streaming.messages import Command, EngineStats, Event, Open, SessionFailed
from streaming.runner import Runner, StepPlan, StepResult, model_threads
from streaming.scheduler import Headroom, Policy, Scheduler
from streaming.slots import Slots

__all__ = ["Engine", "EngineConfig", "EngineSession"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    max_sessions: int = MAX_SESSIONS
    max_context: int = MAX_CONTEXT  # positions per slot (KV cache capacity)
    prefill_budget: int = PREFILL_BUDGET  # prefill positions per iteration, over all slots
    decoder: Literal["auto", "mimi", "lfm2.5"] = "auto"
    compile: bool = False  # torch.compile the static-shape decode step (models/compiled.py)
    static_batch: bool = False  # True: decode steps run every slot (masked), results independent of the batch
    saturated_step_s: float = 0.06  # a decode step slower than this means the machine is saturated
    lead_s: float = 1.5  # ... then sessions this far ahead of playback may wait a step
    first_audio_lead_s: float = 0.4  # sessions this far ahead wait while another works towards its first audio
    speculate_lead_s: float = 0.4  # speculative work runs beside sessions at least this far ahead of playback
    speculative_start: bool = SPECULATIVE_START  # sessions' default (streaming/speculation.py)
    admit_load: float | None = 0.8  # admit while predicted steps use at most this much of real time; None: slots
    admit_floor: int = 4  # sessions always admitted (up to the slots), whatever the steps measure
    stall_s: float = 30.0  # no iteration for this long while busy: the engine is not ready
    threads: int | None = None  # torch threads; None: 1 for a small model, else torch's default


CALIBRATION_WEIGHT = 20  # each calibrated batch counts as this many steps: forgotten after a few hundred real ones
# Steps served alongside the event loop (the GIL, the clients' audio) are slower than steps timed alone: measured
# 2.4x on 2 cores with 32 load-test users on the same machine (50 ms at 18 rows served, 21 ms at 16 calibrated).
# A runner in its own process (streaming/worker.py) declares its own factor.
SERVING_OVERHEAD = 2.0
STATS_KEPT = 10_000  # samples kept between two drains (a server nobody scrapes must not grow)


class Engine:
    def __init__(self, ckpt: Checkpoint | CheckpointHeader, config: EngineConfig | None = None,
                 runner: Runner | None = None) -> None:
        """`runner`: the model work (a ProcessRunner, or a scripted one in tests); by default a Runner on
        `ckpt` (which then needs its weights)."""
        self.ckpt = ckpt
        self.config = cfg = config or EngineConfig()
        self.tokenizer = ckpt.tokenizer
        self.runner = runner or Runner(ckpt, slots=cfg.max_sessions, capacity=cfg.max_context, decoder=cfg.decoder,
                                       compile=cfg.compile, static=cfg.static_batch)
        headroom = None
        if cfg.admit_load is not None:
            c = ckpt.config  # a real-time session needs this many decode steps per second of its speech
            steps_per_s = (c.interleaved_n_text + c.interleaved_n_audio) / (c.interleaved_n_audio * FRAME_S)
            headroom = Headroom(steps_per_s, cfg.admit_load, floor=cfg.admit_floor)
        self.scheduler = Scheduler(cfg.max_sessions, Policy(cfg.prefill_budget, cfg.saturated_step_s, cfg.lead_s,
                                                            cfg.first_audio_lead_s, cfg.speculate_lead_s), headroom)
        self._stats = EngineStats(slots_total=cfg.max_sessions)
        self._stats_lock = threading.Lock()
        self.slots = Slots(ckpt.config, self.tokenizer, self.scheduler, cfg.max_context, self._stats, self._stats_lock)
        self._inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._order = threading.Lock()  # admission and its command enter the inbox together
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._busy = False
        self.error: BaseException | None = None

    # ---- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lfm-audio-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        close = getattr(self.runner, "close", None)  # a runner in another process (streaming/worker.py)
        if close is not None:
            close()

    def run_until_idle(self) -> None:
        """Run iterations on the calling thread until every command is applied and no work is left (a
        single-session driver: streaming/offline.py). Not with `start()`."""
        assert self._thread is None, "the engine runs on its own thread"
        self._set_threads()
        while True:
            self._drain(block=False)
            if not self.slots.busy():
                return
            self._iterate()

    @property
    def ready(self) -> bool:
        """Alive, and not stuck: a busy engine must complete an iteration every `stall_s`."""
        if self._thread is None or not self._thread.is_alive() or self.error is not None:
            return False
        return not (self._busy and time.monotonic() - self._stats.last_heartbeat > self.config.stall_s)

    def stats(self, drain: bool = True) -> EngineStats:
        s = self._stats
        with self._stats_lock:
            snap = replace(s, step_seconds=list(s.step_seconds), batch_sizes=list(s.batch_sizes),
                           prefill_seconds=list(s.prefill_seconds), slots_used=self.scheduler.used, alive=self.ready,
                           speculative_saved_seconds=list(s.speculative_saved_seconds))
            if drain:
                s.speculative_saved_seconds.clear()
                s.step_seconds.clear()
                s.batch_sizes.clear()
                s.prefill_seconds.clear()
        return snap

    @property
    def slots_free(self) -> int:
        return self.scheduler.free

    # ---- sessions (any thread)
    def open(self, sink: Callable[[Event], None]) -> EngineSession:
        """A new session on a free slot, or EngineFull."""
        session = EngineSession(self, next(self._ids))
        with self._order:
            self.scheduler.admit(session.id)
            self._inbox.put(Open(session.id, sink, session))
        return session

    def submit(self, command: Command) -> None:
        self._inbox.put(command)

    def withdraw(self, session: int, command: Command) -> None:
        """A closing session's slot counts as free at once; its command is applied before any later open."""
        with self._order:
            self.scheduler.withdraw(session)
            self._inbox.put(command)

    # ---- the loop
    def _set_threads(self) -> None:
        threads = model_threads(self.ckpt.config.lfm.hidden_size, self.config.threads)
        if threads:
            torch.set_num_threads(threads)

    def _calibrate(self) -> None:
        """Step costs at a few batch sizes before the first session, so that admission can predict from the
        start (sessions arrive before they generate); measured steps then take over."""
        if self.scheduler.headroom is None or not hasattr(self.runner, "calibrate"):
            return
        n = self.config.max_sessions
        measured = self.runner.calibrate(sorted({1, max(1, n // 2), n}))
        overhead = getattr(self.runner, "serving_overhead", SERVING_OVERHEAD)
        for batch, seconds in measured:
            for _ in range(CALIBRATION_WEIGHT):
                self.scheduler.observe_step(batch, seconds * overhead)
        h = self.scheduler.headroom
        fits = max((k for k in range(1, n + 1) if h.admits(k)), default=0)
        log.info("decode steps: %s; real time allows %.0f ms per step: admits up to %d of %d sessions now",
                 ", ".join(f"{b} rows {1000 * s:.1f} ms" for b, s in measured), 1000 * h.budget_s, fits, n)

    def _loop(self) -> None:
        self._set_threads()
        try:
            self._calibrate()
            while not self._stop.is_set():
                self._stats.last_heartbeat = time.monotonic()
                self._busy = self.slots.busy()
                self._drain(block=not self._busy)
                if self._stop.is_set():
                    break
                self._iterate()
        except BaseException as e:  # a bug in the engine itself: fail every session, report not ready
            log.exception("engine thread died")
            self.error = e
            with contextlib.suppress(Exception):  # sessions opened meanwhile hear it too
                self._drain(block=False)
            self.slots.fail_all(f"engine failure: {e!r}")
            self._fan_out()

    def _drain(self, block: bool) -> None:
        try:
            cmd = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while cmd is not None:
            self.slots.apply(cmd)
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                break
        self._fan_out()

    def _iterate(self) -> None:
        plan = self.slots.schedule()
        # Nothing for the runner (a round trip, when it is another process); the update still finishes responses.
        result = self.runner.step(plan) if plan != StepPlan() else StepResult()
        self.slots.update(plan, result)
        with self._stats_lock:
            s = self._stats
            for seconds in result.prefill_seconds:
                _record(s.prefill_seconds, seconds)
            if result.decode_seconds is not None:
                s.steps += 1
                _record(s.step_seconds, result.decode_seconds)
                _record(s.batch_sizes, len(plan.decode))
        if result.decode_seconds is not None:
            self.scheduler.observe_step(len(plan.decode), result.decode_seconds)
        self._fan_out()

    def _fan_out(self) -> None:
        """The one loop over the events: each to its session's sink. A sink that raises fails its own
        session only, which then gets nothing more but its SessionFailed."""
        broken: set[int] = set()
        while events := self.slots.take_events():
            for slot, event in events:
                if slot.session in broken and not isinstance(event, SessionFailed):
                    continue
                try:
                    slot.sink(event)
                except Exception:
                    log.exception("session %d: event sink raised", slot.session)
                    if slot.session not in broken and not isinstance(event, SessionFailed):
                        broken.add(slot.session)
                        self.slots.fail(slot, "event sink raised")


def _record(samples: list, value: float) -> None:
    samples.append(value)
    if len(samples) > STATS_KEPT:
        del samples[: len(samples) - STATS_KEPT]
