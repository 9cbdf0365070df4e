"""The engine's model work: every tensor of every slot, and one `step(plan) -> result` over them.

Only the engine thread calls this. A plan and a result are Python values, NumPy arrays and conversation
segments; device tensors stay inside: the backbone state, the speech decoders' state, each slot's hidden
state after its prefill (read by its first decode step) and each response's random generator.

A step runs, in order: put back rows whose speculative work was dropped (their conv state from the snapshot
taken before it; the positions go back with the conversation), forget the snapshots of confirmed ones, encode the
user clips, flush finished speech streams, reset rows, start responses, snapshot rows about to prefill
speculatively, prefill chunks, one batched decode step, then speech for the decoded audio frames. Work that fails is
reported per slot (`failed`); the engine fails those sessions and the others carry on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor

from models.checkpoint import Checkpoint
from models.conversation import Segment, embed_segments
from models.decode import RowSampling, prefill, sample_items
from models.generation import Modality
from models.lfm2 import BackboneState
from models.mel import log_mel
from models.sampling import SamplingParams
from models.speech import SpeechDecoder, is_speech, pick_decoder

__all__ = ["Decode", "Prefill", "Runner", "Start", "StepPlan", "StepResult", "model_threads"]

log = logging.getLogger(__name__)
Value = int | tuple[int, ...]  # a text token or an audio frame's codes


@dataclass(frozen=True)
class Start:
    """A response begins on a slot: its own generator (seeded, or random) and, if it speaks, a new stream."""

    slot: int
    seed: int | None
    speak: bool


@dataclass(frozen=True)
class Prefill:
    slot: int
    position: int  # positions the row holds before this chunk
    segments: list[Segment]
    reset: bool = False  # clear the row first (the conversation is rebuilt from its start)
    last: bool = False  # the prefill's last chunk: keep its hidden state for the first decode step


@dataclass(frozen=True)
class Decode:
    slot: int
    position: int  # where `feed` goes
    feed: tuple[Modality, Value] | None  # the item to feed first; None: right after the prefill
    want: Modality
    text: SamplingParams
    audio: SamplingParams
    speak: bool  # decode a sampled audio frame to speech


@dataclass
class StepPlan:
    encode: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (slot, 16 kHz clip)
    flush: list[int] = field(default_factory=list)  # speech streams to finish
    reset: list[int] = field(default_factory=list)  # rows to clear (a new session)
    start: list[Start] = field(default_factory=list)
    prefill: list[Prefill] = field(default_factory=list)
    decode: list[Decode] = field(default_factory=list)
    snapshot: list[int] = field(default_factory=list)  # rows whose state to keep before this step's prefill
    restore: list[int] = field(default_factory=list)  # rows back to their snapshot (and no response state)
    forget: list[int] = field(default_factory=list)  # snapshots no longer needed


@dataclass
class StepResult:
    encoded: dict[int, Segment] = field(default_factory=dict)  # CPU embeddings, kept in the conversation
    tails: dict[int, np.ndarray] = field(default_factory=dict)
    items: dict[int, Value] = field(default_factory=dict)
    pcm: dict[int, np.ndarray] = field(default_factory=dict)  # 24 kHz float32, one frame's speech
    failed: dict[int, str] = field(default_factory=dict)
    prefill_seconds: list[float] = field(default_factory=list)
    decode_seconds: float | None = None  # the decode step and its speech


def model_threads(hidden_size: int, configured: int | None = None) -> int | None:
    """Torch threads for the model work (None: torch's default)."""
    if configured is None and hidden_size < 1024:
        # Measured: a small model's ops are too short to gain from a second thread, and from the engine's
        # thread the OpenMP hand-offs made each step about 3x slower.
        return 1
    return configured


class Runner:
    def __init__(self, ckpt: Checkpoint, *, slots: int, capacity: int, decoder: str = "auto",
                 compile: bool = False, static: bool = True) -> None:
        self.model = ckpt.model
        self.slots = slots
        self.capacity = capacity
        m = self.model
        self.state = BackboneState.allocate(m.cfg.lfm, slots, capacity, device=m.device, dtype=m.dtype)
        self.speech = SpeechDecoder(pick_decoder(ckpt, decoder), rows=slots)
        self.static = static or compile
        self.compiled = None
        if compile:
            from models.compiled import CompiledSteps

            self.compiled = CompiledSteps(m, self.state)
        self._hidden: dict[int, Tensor] = {}  # slot -> the last prefill's hidden state
        self._generators: dict[int, torch.Generator] = {}  # slot -> its response's generator
        self._snapshots: dict[int, list] = {}  # slot -> its conv state before speculative work

    @property
    def decoder_name(self) -> str:
        return self.speech.name

    @torch.inference_mode()
    def step(self, plan: StepPlan) -> StepResult:
        out = StepResult()
        for slot in plan.restore:
            self._restore(slot)
        for slot in plan.forget:
            self._snapshots.pop(slot, None)
        for slot, audio in plan.encode:
            self._guard(out, [slot], "could not encode the audio", partial(self._encode, slot, audio, out))
        for slot in plan.flush:
            try:
                out.tails[slot] = self.speech.finish([slot])[0].numpy()
            except Exception:  # the response is over either way; only its last few ms are lost
                log.exception("speech flush failed")
        if plan.reset:
            self.state.reset_rows(plan.reset)
        for s in plan.start:
            self._start(s)
        for slot in plan.snapshot:
            self._snapshots[slot] = self.state.snapshot_row(slot)
        for p in plan.prefill:
            t0 = time.perf_counter()
            self._guard(out, [p.slot], "prefill failed", partial(self._prefill, p))
            out.prefill_seconds.append(time.perf_counter() - t0)
        decode = [d for d in plan.decode if d.slot not in out.failed]
        if decode:
            t0 = time.perf_counter()
            # Whose fault a batched step's failure is cannot be told: the batch's sessions fail.
            self._guard(out, [d.slot for d in decode], "decode step failed", partial(self._decode, decode, out))
            speak = [d for d in decode if d.speak and d.slot in out.items and d.want == Modality.AUDIO_OUT
                     and is_speech(out.items[d.slot])]
            if speak:
                self._guard(out, [d.slot for d in speak], "speech decoding failed", partial(self._speak, speak, out))
            out.decode_seconds = time.perf_counter() - t0
        return out

    @torch.inference_mode()
    def calibrate(self, batches: list[int], repeats: int = 3) -> list[tuple[int, float]]:
        """Time decode steps of `batch` rows (two in three speaking a frame, as interleaved turns do), on the
        slots from 0 up, then clear those rows: what admission predicts from before the first session. Only
        before any session holds a slot."""
        out = []
        text, audio = SamplingParams(), SamplingParams(1.0, 4)
        for batch in batches:
            rows = list(range(min(batch, self.slots)))
            for r in rows:
                self._start(Start(r, seed=r, speak=True))
            plan = StepPlan(decode=[
                Decode(r, 0, (Modality.TEXT, 0), Modality.TEXT if r % 3 == 2 else Modality.AUDIO_OUT, text, audio,
                       True) for r in rows])
            times = []
            for _ in range(repeats):
                result = self.step(plan)
                if result.failed or result.decode_seconds is None:
                    break
                times.append(result.decode_seconds)
            if times:
                out.append((len(rows), min(times[1:] or times)))  # the first call pays one-time allocations
        every = list(range(self.slots))
        self.state.reset_rows(every)
        self.speech.start(every)
        self._generators.clear()
        return out

    @staticmethod
    def _guard(out: StepResult, slots: list[int], what: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as e:
            log.exception("%s for slots %s", what, slots)
            for s in slots:
                out.failed.setdefault(s, f"{what}: {e}")

    def _encode(self, slot: int, audio_16k: np.ndarray, out: StepResult) -> None:
        """A user clip -> its input embeddings, once, kept in the conversation."""
        mel = log_mel(torch.from_numpy(np.ascontiguousarray(audio_16k, dtype=np.float32)), self.model.cfg.preprocessor)
        out.encoded[slot] = Segment(Modality.AUDIO_IN, self.model.encode_audio([mel])[0].cpu())

    def _start(self, s: Start) -> None:
        generator = torch.Generator(device=self.model.device)
        if s.seed is not None:
            generator.manual_seed(s.seed)
        else:
            generator.seed()
        self._generators[s.slot] = generator
        self._hidden.pop(s.slot, None)
        if s.speak:
            self.speech.start([s.slot])

    def _restore(self, slot: int) -> None:
        """The row as it was before its dropped speculative work: conv state back, its response's state gone."""
        saved = self._snapshots.pop(slot, None)
        if saved is not None:
            self.state.restore_row(slot, saved)
        self._hidden.pop(slot, None)
        self._generators.pop(slot, None)

    def _prefill(self, p: Prefill) -> None:
        if p.reset:
            self.state.reset_rows([p.slot])
        h = prefill(self.model, self.state, p.slot, p.position, embed_segments(self.model, p.segments))
        if p.last:
            self._hidden[p.slot] = h

    def _decode(self, batch: list[Decode], out: StepResult) -> None:
        """One step for a batch of slots. Row b either feeds its last item through the backbone or
        already has its hidden state (the step right after a prefill). With `static` (the default),
        every matrix product runs over all slots, masked: a session's numbers never depend on who else is
        in the batch, and the shapes never change (compile, CUDA graphs). Without it, only the batch's
        rows run, which is cheaper on a CPU at low occupancy."""
        m = self.model
        slots = [d.slot for d in batch]
        rows = slots if not self.static else list(range(self.slots))
        index = {slot: r for r, slot in enumerate(rows)}
        h = torch.zeros(len(rows), m.cfg.lfm.hidden_size, dtype=m.dtype, device=m.device)
        step = [d for d in batch if d.feed is not None]
        if step:
            x = torch.zeros_like(h)
            pos = torch.zeros(len(rows), dtype=torch.long)
            active = torch.zeros(len(rows), dtype=torch.bool)
            at = [index[d.slot] for d in step]
            x[at] = self._embed_feeds([d.feed for d in step])
            pos[at] = torch.tensor([d.position for d in step])
            active[at] = True
            if self.compiled is not None:
                y = self.compiled.backbone_step(x, pos.to(m.device), active.to(m.device))
            elif self.static:
                y = m.lfm(x[:, None], self.state, pos, active=active.to(m.device), kv_len=self.capacity)[:, 0]
            else:
                y = m.lfm(x[:, None], self.state, pos, rows=torch.tensor(rows, device=m.device),
                          active=active.to(m.device), kv_len=int(pos.max()) + 1)[:, 0]
            h[at] = y[at]
        for d in batch:
            if d.feed is None:
                h[index[d.slot]] = self._hidden.pop(d.slot)
        want: list[Modality | None] = [None] * len(rows)
        sampling: list[RowSampling | None] = [None] * len(rows)
        for d in batch:
            want[index[d.slot]] = d.want
            sampling[index[d.slot]] = RowSampling(d.text, d.audio, self._generators[d.slot])
        items = sample_items(m, h, want, sampling, self.compiled, all_rows=self.static)
        for d in batch:
            out.items[d.slot] = items[index[d.slot]]

    def _embed_feeds(self, feeds: list[tuple[Modality, Value]]) -> Tensor:
        m = self.model
        x = torch.empty(len(feeds), m.cfg.lfm.hidden_size, dtype=m.dtype, device=m.device)
        text = [b for b, (k, _) in enumerate(feeds) if k == Modality.TEXT]
        audio = [b for b, (k, _) in enumerate(feeds) if k != Modality.TEXT]
        if text:
            x[text] = m.embed_text(torch.tensor([feeds[b][1] for b in text], device=m.device))
        if audio:
            x[audio] = m.embed_frames(torch.tensor([feeds[b][1] for b in audio], device=m.device))
        return x

    def _speak(self, batch: list[Decode], out: StepResult) -> None:
        slots = [d.slot for d in batch]
        pcm = self.speech.step(torch.tensor([out.items[s] for s in slots], dtype=torch.long), slots)
        for s, chunk in zip(slots, pcm, strict=True):
            out.pcm[s] = chunk.numpy()
