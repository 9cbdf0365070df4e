"""The serving engine: one thread owns the model and `max_sessions` slots, and batches every
generating session into one decode step per iteration.

Sessions talk to it only through `EngineSession` (thread-safe calls that queue commands) and receive
events through the sink they gave at `open` (called on the engine thread; a server hops them to its
event loop). A slot keeps its conversation and backbone state across turns, so a new turn prefills only
what is new. Iteration: apply commands -> encode at most one queued user clip -> prefill under a
budget (streaming/scheduler.py) -> one batched decode step -> speech for the audio rows -> events.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from models.chat import ASR_PROMPT
from models.checkpoint import Checkpoint
from models.config import EOA
from models.conversation import Conversation, Item, Segment
from models.decode import RowSampling
from models.generation import Finish, Generation, Modality
from models.sampling import SamplingParams
from models.tokenizer import TextStream
from streaming.messages import (
    AudioDelta,
    EngineFull,
    EngineStats,
    Event,
    ItemAdded,
    Mode,
    ResponseDone,
    ResponseRequest,
    SessionFailed,
    Status,
    TextDelta,
    Timings,
    Usage,
)
from streaming.runner import Runner
from streaming.scheduler import SlotView, plan_iteration

__all__ = ["Engine", "EngineConfig", "EngineSession"]

log = logging.getLogger(__name__)
FRAME_S = 0.08


@dataclass(frozen=True)
class EngineConfig:
    max_sessions: int = 8
    max_context: int = 4096  # positions per slot (KV cache capacity)
    prefill_budget: int = 256  # prefill positions per iteration, over all slots
    decoder: str = "auto"  # auto | mimi | lfm2.5
    compile: bool = False  # torch.compile the static-shape decode step (models/compiled.py)
    static_batch: bool = True  # decode steps run every slot (masked): results independent of the batch
    saturated_step_s: float = 0.06  # a decode step slower than this means the machine is saturated
    lead_s: float = 1.5  # ... then sessions this far ahead of playback may wait a step
    stall_s: float = 30.0  # no iteration for this long while busy: the engine is not ready
    threads: int | None = None  # torch threads; None: 1 for a small model, else torch's default


@dataclass
class _Response:
    request: ResponseRequest
    item: Item
    gen: Generation
    sampling: RowSampling
    text: TextStream
    usage: Usage
    timings: Timings
    hidden: Tensor | None = None  # the prefill's last hidden state, used by the first step
    feed: tuple[Modality, int | tuple[int, ...]] | None = None  # the item to feed at the next step
    prefilled: bool = False
    frames: int = 0  # audio frames decoded to speech
    cancel_reason: str | None = None  # set by a cancel: finished at the next iteration
    length_reason: str = "max_output_tokens"  # or "max_context"
    transcript: list[str] = field(default_factory=list)


@dataclass
class _Slot:
    index: int
    session: int
    sink: Callable[[Event], None]
    conv: Conversation
    encode_queue: deque = field(default_factory=deque)  # (item, audio) clips still to encode
    response: _Response | None = None
    queued: deque = field(default_factory=deque)  # responses requested while one runs
    waiting_since: float = 0.0
    skipped_last: bool = False
    underrun: bool = False
    ephemeral: bool = False  # closes itself after its response (transcriptions)


STATS_KEPT = 10_000  # samples kept between two drains (a server nobody scrapes must not grow)


def _record(samples: list, value: float) -> None:
    samples.append(value)
    if len(samples) > STATS_KEPT:
        del samples[: len(samples) - STATS_KEPT]


class EngineSession:
    """A session's handle on the engine. Every method only queues a command; results come as events."""

    def __init__(self, engine: Engine, session: int) -> None:
        self._engine = engine
        self.id = session
        self.closed = False

    def add_item(self, item_id: str, role: str, *, text: str | None = None, audio: np.ndarray | None = None,
                 after: str | None = None, first: bool = False) -> None:
        """A system, user or assistant item: text, and/or a user clip (16 kHz float32); appended, or
        placed after the item `after`, or first."""
        self._engine._command(self.id, "add", item_id, role, text, audio, after, first)

    def delete_item(self, item_id: str) -> None:
        self._engine._command(self.id, "delete", item_id)

    def truncate_item(self, item_id: str, audio_end_ms: int) -> None:
        self._engine._command(self.id, "truncate", item_id, audio_end_ms)

    def respond(self, request: ResponseRequest) -> None:
        self._engine._command(self.id, "respond", request)

    def transcribe(self, item_id: str, response_id: str) -> None:
        """ASR of a user item's audio, as a separate response (on a spare slot, if one is free)."""
        self._engine._command(self.id, "transcribe", item_id, response_id)

    def cancel(self, reason: str = "client_cancelled") -> None:
        self._engine._command(self.id, "cancel", reason)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._engine._closing_session(self.id)
            self._engine._command(self.id, "close")


class Engine:
    def __init__(self, ckpt: Checkpoint, config: EngineConfig | None = None) -> None:
        self.ckpt = ckpt
        self.config = config or EngineConfig()
        self.runner = Runner(ckpt, slots=self.config.max_sessions, capacity=self.config.max_context,
                             decoder=self.config.decoder, compile=self.config.compile,
                             static=self.config.static_batch)
        self.tokenizer = ckpt.tokenizer
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._slots: dict[int, _Slot] = {}  # slot index -> slot
        self._by_session: dict[int, _Slot] = {}
        self._free = list(range(self.config.max_sessions))
        self._lock = threading.Lock()  # guards _free/_reserved and stats
        self._reserved = 0  # sessions opened whose slot the engine thread has not taken yet
        self._holding: set[int] = set()  # sessions that hold a slot
        self._closing: set[int] = set()  # ... and were closed, the engine thread not having freed it yet
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stats = EngineStats(slots_total=self.config.max_sessions)
        self._last_step_s = 0.0
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

    @property
    def ready(self) -> bool:
        """Alive, and not stuck: a busy engine must complete an iteration every `stall_s`."""
        if self._thread is None or not self._thread.is_alive() or self.error is not None:
            return False
        return not (self._busy and time.monotonic() - self._stats.last_heartbeat > self.config.stall_s)

    def stats(self, drain: bool = True) -> EngineStats:
        with self._lock:
            snap = replace(self._stats, step_seconds=list(self._stats.step_seconds),
                           batch_sizes=list(self._stats.batch_sizes), prefill_seconds=list(self._stats.prefill_seconds),
                           slots_used=self.config.max_sessions - len(self._free), alive=self.ready)
            if drain:
                self._stats.step_seconds.clear()
                self._stats.batch_sizes.clear()
                self._stats.prefill_seconds.clear()
        return snap

    @property
    def slots_free(self) -> int:
        with self._lock:
            return self._available()

    def _available(self) -> int:
        # Commands run in order: a slot being closed is free by the time a later open is applied.
        return len(self._free) - self._reserved + len(self._closing)

    def _closing_session(self, session: int) -> None:
        with self._lock:
            if session in self._holding:
                self._closing.add(session)

    # ---- sessions
    def open(self, sink: Callable[[Event], None]) -> EngineSession:
        """A new session on a free slot, or EngineFull."""
        with self._lock:
            if self._available() <= 0:
                raise EngineFull(f"all {self.config.max_sessions} sessions are in use")
            self._reserved += 1
        session = EngineSession(self, next(self._ids))
        self._inbox.put((session.id, "open", sink))
        return session

    def _command(self, session: int, *args: object) -> None:
        self._inbox.put((session, *args))

    # ---- the loop
    def _loop(self) -> None:
        threads = self.config.threads
        if threads is None and self.ckpt.config.lfm.hidden_size < 1024:
            # Measured: a small model's ops are too short to gain from a second thread, and from this
            # thread the OpenMP hand-offs made each step about 3x slower.
            threads = 1
        if threads:
            torch.set_num_threads(threads)
        try:
            while not self._stop.is_set():
                self._stats.last_heartbeat = time.monotonic()
                self._busy = self._has_work()
                self._drain(block=not self._busy)
                if self._stop.is_set():
                    break
                self._iterate()
        except BaseException as e:  # a bug in the engine itself: fail every session, report not ready
            log.exception("engine thread died")
            self.error = e
            for slot in list(self._slots.values()):
                self._emit(slot, SessionFailed(f"engine failure: {e!r}"))

    def _has_work(self) -> bool:
        return any(s.encode_queue or s.response or s.queued for s in self._slots.values())

    def _drain(self, block: bool) -> None:
        try:
            cmd = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while cmd is not None:
            self._apply(cmd)
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, cmd: tuple) -> None:
        session, kind, *args = cmd
        if kind == "open":
            self._open_slot(session, args[0])
            return
        slot = self._by_session.get(session)
        if slot is None:
            return  # closed or failed already
        try:
            getattr(self, f"_cmd_{kind}")(slot, *args)
        except Exception as e:  # a bad request fails only its session
            log.exception("session %d: %s failed", session, kind)
            self._fail(slot, f"{kind} failed: {e}")

    def _open_slot(self, session: int, sink: Callable[[Event], None], ephemeral: bool = False) -> _Slot | None:
        with self._lock:
            if not ephemeral:
                self._reserved -= 1
            if not self._free:  # an ephemeral request found none; for a session, admission prevents this
                if not ephemeral:
                    log.error("no free slot for session %d", session)
                    sink(SessionFailed("no free slot"))
                return None
            index = self._free.pop(0)
            self._holding.add(session)
        self.runner.reset(index)
        slot = _Slot(index, session, sink, Conversation(self.tokenizer), ephemeral=ephemeral)
        self._slots[index] = slot
        self._by_session[session] = slot
        return slot

    def _release(self, slot: _Slot) -> None:
        self._slots.pop(slot.index, None)
        if self._by_session.get(slot.session) is slot:
            del self._by_session[slot.session]
        with self._lock:
            self._free.append(slot.index)
            self._holding.discard(slot.session)
            self._closing.discard(slot.session)

    def _emit(self, slot: _Slot, event: Event) -> None:
        try:
            slot.sink(event)
        except Exception:  # a broken consumer fails its own session only
            log.exception("session %d: event sink raised", slot.session)
            if not isinstance(event, SessionFailed):
                self._fail(slot, "event sink raised")

    def _fail(self, slot: _Slot, message: str) -> None:
        if slot.index not in self._slots:
            return
        self._stats.sessions_failed += 1
        self._release(slot)
        self._emit(slot, SessionFailed(message))

    # ---- commands (engine thread)
    def _cmd_add(self, slot: _Slot, item_id: str, role: str, text: str | None, audio: np.ndarray | None,
                 after: str | None, first: bool) -> None:
        item = Item(item_id, role)
        if text is not None:
            item.segments.append(Segment(Modality.TEXT, self.tokenizer.encode(text)))
        slot.conv.add(item, after=after, first=first)
        if audio is not None:
            slot.encode_queue.append((item, audio))  # encoded in turn, one clip per iteration
        else:
            self._emit(slot, ItemAdded(item_id, sum(len(s) for s in item.segments)))

    def _cmd_delete(self, slot: _Slot, item_id: str) -> None:
        slot.conv.delete(item_id)

    def _cmd_truncate(self, slot: _Slot, item_id: str, audio_end_ms: int) -> None:
        slot.conv.truncate_audio(item_id, round(audio_end_ms / (FRAME_S * 1000)))

    def _cmd_respond(self, slot: _Slot, request: ResponseRequest) -> None:
        if slot.response is not None:
            slot.queued.append(request)
            return
        self._start_response(slot, request)

    def _start_response(self, slot: _Slot, request: ResponseRequest) -> None:
        cfg = self.ckpt.config
        gen = (Generation.interleaved_turn(request.max_tokens, cfg.interleaved_n_text, cfg.interleaved_n_audio)
               if request.mode.interleaved else Generation.sequential_turn(request.max_tokens))
        generator = torch.Generator(device=self.ckpt.model.device)
        if request.seed is not None:
            generator.manual_seed(request.seed)
        else:
            generator.seed()
        sampling = RowSampling(SamplingParams(request.text_temperature, request.text_top_k),
                               SamplingParams(request.audio_temperature, request.audio_top_k), generator)
        item = Item(request.item_id, "assistant", closed=False)
        slot.conv.add(item)
        slot.response = _Response(request, item, gen, sampling, TextStream(self.tokenizer), Usage(),
                                  Timings(requested=time.perf_counter()))
        slot.waiting_since = time.perf_counter()
        self._fit_context(slot, request.max_tokens)

    def _fit_context(self, slot: _Slot, reserve: int) -> None:
        """Drop the oldest turns (never the system prompt or the open response) until the history plus
        some room to answer fits; the state is then rebuilt from the kept history."""
        room = min(reserve, self.config.max_context // 4)
        keep = (slot.response.item.id,) if slot.response else ()
        while slot.conv.length() + room > self.config.max_context:
            if slot.conv.drop_oldest(keep) is None:
                break

    def _cmd_transcribe(self, slot: _Slot, item_id: str, response_id: str) -> None:
        def refuse(why: str) -> None:
            self._emit(slot, ResponseDone(response_id, item_id, Status.FAILED, why, Usage(), Timings(), ""))

        for queued in list(slot.encode_queue):  # needed now: encode it ahead of its turn
            if queued[0].id == item_id:
                slot.encode_queue.remove(queued)
                self._encode(slot, *queued)
        try:
            source = slot.conv.get(item_id)
        except KeyError:
            return refuse(f"no item {item_id}")
        clip = next((s for s in source.segments if s.kind == Modality.AUDIO_IN), None)
        if clip is None:
            return refuse(f"item {item_id} has no audio")
        with self._lock:
            spare = len(self._free) - self._reserved > 0  # never a slot promised to a session being opened
        helper = self._open_slot(-next(self._ids), slot.sink, ephemeral=True) if spare else None
        if helper is None:
            return refuse("no free slot for transcription")
        helper.conv.add(Item("system", "system", [Segment(Modality.TEXT, self.tokenizer.encode(ASR_PROMPT))]))
        helper.conv.add(Item(item_id, "user", [clip]))
        self._start_response(helper, ResponseRequest(response_id, item_id, Mode.ASR, max_tokens=512, audio=False,
                                                     audio_temperature=0.0))
        return None

    def _cmd_cancel(self, slot: _Slot, reason: str) -> None:
        slot.queued.clear()
        if slot.response is not None:
            slot.response.cancel_reason = reason

    def _cmd_close(self, slot: _Slot) -> None:
        self._release(slot)

    # ---- one iteration
    def _iterate(self) -> None:
        for slot in list(self._slots.values()):
            if slot.response is not None and slot.response.cancel_reason:
                slot.response.gen.cancel()
                self._finish(slot)
        self._encode_one()
        views = [self._view(s) for s in self._slots.values() if s.response is not None and not s.encode_queue]
        plan = plan_iteration(views, prefill_budget=self.config.prefill_budget, last_step_s=self._last_step_s,
                              saturated_step_s=self.config.saturated_step_s, lead_s=self.config.lead_s)
        self._stats.queue_depth = sum(1 for v in views if v.pending_positions > 0)
        for index, n in plan.prefill:
            self._prefill(self._slots[index], n)
        decode = [i for i in plan.decode if i in self._slots] + [
            index for index, _ in plan.prefill
            if index in self._slots and self._slots[index].response and self._slots[index].response.prefilled
        ]
        for index in plan.skipped:
            self._slots[index].skipped_last = True
        self._stats.skipped_rows += len(plan.skipped)
        if decode:
            self._decode([self._slots[i] for i in dict.fromkeys(decode)])

    def _view(self, slot: _Slot) -> SlotView:
        r = slot.response
        pending = 0 if r.prefilled else max(1, slot.conv.pending_length())
        lead = 0.0
        if r.timings.first_audio is not None:
            lead = r.frames * FRAME_S - (time.perf_counter() - r.timings.first_audio)
        return SlotView(slot.index, slot.waiting_since, pending, r.prefilled, lead, slot.skipped_last)

    def _encode_one(self) -> None:
        for slot in list(self._slots.values()):
            if slot.encode_queue:
                self._encode(slot, *slot.encode_queue.popleft())
                return  # at most one clip per iteration: it costs about a decode step

    def _encode(self, slot: _Slot, item: Item, audio: np.ndarray) -> None:
        try:
            seg = self.runner.encode(audio)
        except Exception as e:
            log.exception("session %d: encoding failed", slot.session)
            self._fail(slot, f"could not encode the audio: {e}")
            return
        if item in slot.conv.items:
            item.segments.insert(0, seg)
            if slot.conv.position > slot.conv.start_of(item.id):
                slot.conv.stale = True  # the row already holds positions after this item's start
        self._emit(slot, ItemAdded(item.id, sum(len(s) for s in item.segments)))

    def _prefill(self, slot: _Slot, budget: int) -> None:
        r = slot.response
        t0 = time.perf_counter()
        try:
            if slot.conv.stale:
                self.runner.reset(slot.index)
                slot.conv.reset()
            pending = slot.conv.pending()
            chunk, n = [], 0
            for seg in pending:
                take = min(len(seg), budget - n)
                chunk.append(seg if take == len(seg) else seg[:take])
                n += take
                if n >= budget:
                    break
            total = sum(len(s) for s in pending)
            if slot.conv.position + total > self.config.max_context:
                raise RuntimeError(f"the conversation does not fit the context of {self.config.max_context}")
            if r.usage.input_positions == 0 and r.usage.cached_positions == 0:
                r.usage.cached_positions = slot.conv.position
            r.hidden = self.runner.prefill(slot.index, slot.conv.position, chunk)
            slot.conv.held(n)
            r.usage.input_positions += n
            self._stats.prefill_positions += n
            if n >= total:
                r.prefilled = True
                r.timings.prefill_done = time.perf_counter()
                if r.request.audio:
                    self.runner.start_speech([slot.index])
        except Exception as e:
            log.exception("session %d: prefill failed", slot.session)
            self._fail(slot, f"prefill failed: {e}")
            return
        with self._lock:
            _record(self._stats.prefill_seconds, time.perf_counter() - t0)

    def _decode(self, slots: list[_Slot]) -> None:
        t0 = time.perf_counter()
        want = [s.response.gen.want() for s in slots]
        try:
            rs = [s.response for s in slots]
            items = self.runner.decode(
                [s.index for s in slots], [s.conv.position for s in slots], [r.feed for r in rs],
                [r.hidden if r.feed is None else None for r in rs], want, [r.sampling for r in rs],
            )
        except Exception as e:  # cannot tell whose fault: the batch's sessions fail, the engine goes on
            log.exception("decode step failed for slots %s", [s.index for s in slots])
            for s in slots:
                self._fail(s, f"decode step failed: {e}")
            return
        speak_slots, speak_frames = [], []
        now = time.perf_counter()
        for slot, kind, value in zip(slots, want, items, strict=True):
            r = slot.response
            slot.skipped_last = False
            if r.feed is not None:
                slot.conv.held(1)
            r.hidden, r.feed = None, None
            step = r.gen.accept_text(value) if kind == Modality.TEXT else r.gen.accept_audio(value)
            if step.feed:
                r.item.append_generated(kind, value)
                r.feed = (kind, value)
            if kind == Modality.TEXT and step.emit and value != self.tokenizer.special.im_end:
                r.usage.output_text_tokens += 1
                r.timings.first_text = r.timings.first_text or now
                delta = r.text.push(value)
                if delta:
                    r.transcript.append(delta)
                    self._emit(slot, TextDelta(r.request.response_id, delta))
            elif kind == Modality.AUDIO_OUT and value[0] != EOA:
                r.usage.output_audio_frames += 1
                if r.request.audio:
                    speak_slots.append(slot)
                    speak_frames.append(value)
            if slot.conv.position + 1 >= self.config.max_context and not r.gen.done:
                r.gen.finish, r.length_reason = Finish.LENGTH, "max_context"
        if speak_slots:
            self._speak(speak_slots, speak_frames)
        elapsed = time.perf_counter() - t0
        self._last_step_s = elapsed
        with self._lock:
            self._stats.steps += 1
            _record(self._stats.step_seconds, elapsed)
            _record(self._stats.batch_sizes, len(slots))
        for slot in slots:
            if slot.index in self._slots and slot.response is not None and slot.response.gen.done:
                self._finish(slot)

    def _speak(self, slots: list[_Slot], frames: list[tuple[int, ...]]) -> None:
        try:
            pcm = self.runner.speak([s.index for s in slots], frames)
        except Exception as e:
            log.exception("speech decoding failed")
            for s in slots:
                self._fail(s, f"speech decoding failed: {e}")
            return
        now = time.perf_counter()
        for slot, chunk in zip(slots, pcm, strict=True):
            r = slot.response
            if r.timings.first_audio is None:
                r.timings.first_audio = now
            elif not slot.underrun and r.frames * FRAME_S < now - r.timings.first_audio:
                slot.underrun = True  # the client has played everything we sent: a gap
                self._stats.underruns += 1
            elif slot.underrun and r.frames * FRAME_S >= now - r.timings.first_audio:
                slot.underrun = False
            self._emit(slot, AudioDelta(r.request.response_id, chunk, r.frames))
            r.frames += 1

    def _finish(self, slot: _Slot) -> None:
        r = slot.response
        r.item.closed = True  # the next prefill feeds any unfed last item, then "<|im_end|>\n"
        tail = r.text.flush()
        if tail:
            r.transcript.append(tail)
            self._emit(slot, TextDelta(r.request.response_id, tail))
        if r.prefilled and r.request.audio and r.frames:
            try:
                tail = self.runner.finish_speech([slot.index])[0]
                if tail.size:
                    self._emit(slot, AudioDelta(r.request.response_id, tail, r.frames))
            except Exception:
                log.exception("speech flush failed")
        r.timings.done = time.perf_counter()
        status, reason = {
            Finish.STOP: (Status.COMPLETED, None),
            Finish.LENGTH: (Status.INCOMPLETE, r.length_reason),
        }.get(r.gen.finish, (Status.CANCELLED, r.cancel_reason or "client_cancelled"))
        slot.response = None
        slot.underrun = False
        self._emit(slot, ResponseDone(r.request.response_id, r.item.id, status, reason, r.usage, r.timings,
                                      "".join(r.transcript), tuple(v for _, v in r.gen.items)))
        if slot.ephemeral:
            self._release(slot)
        elif slot.queued and slot.index in self._slots:
            self._start_response(slot, slot.queued.popleft())
