"""The engine's model work: state for every slot, and the batched operations on it.

Only the engine thread calls this. Inputs and outputs are Python values and NumPy arrays; tensors stay
inside (and are copied to the host once per operation).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models.checkpoint import Checkpoint
from models.conversation import Segment, embed_segments
from models.decode import RowSampling, prefill, sample_items
from models.generation import Modality
from models.lfm2 import BackboneState
from models.mel import log_mel
from models.speech import SpeechDecoder, pick_decoder

__all__ = ["Runner"]


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

    @property
    def decoder_name(self) -> str:
        return self.speech.name

    def reset(self, slot: int) -> None:
        self.state.reset_rows([slot])

    @torch.inference_mode()
    def encode(self, audio_16k: np.ndarray) -> Segment:
        """A user clip (16 kHz float32) -> its input embeddings, once, kept in the conversation."""
        mel = log_mel(torch.from_numpy(np.ascontiguousarray(audio_16k, dtype=np.float32)), self.model.cfg.preprocessor)
        return Segment(Modality.AUDIO_IN, self.model.encode_audio([mel])[0].cpu())

    def prefill(self, slot: int, position: int, segments: list[Segment]) -> Tensor:
        """Positions `position...` of a slot's layout; returns the last position's hidden state."""
        x = embed_segments(self.model, segments)
        return prefill(self.model, self.state, slot, position, x)

    @torch.inference_mode()
    def decode(
        self,
        slots: list[int],
        positions: list[int],
        feeds: list[tuple[Modality, int | tuple[int, ...]] | None],
        hidden: list[Tensor | None],
        want: list[Modality],
        sampling: list[RowSampling],
    ) -> list[int | tuple[int, ...]]:
        """One step for a batch of slots. Row b either feeds its last item through the backbone
        (feeds[b]) or already has its hidden state (hidden[b], the step right after a prefill).
        With `static` (the default), every matrix product runs over all slots, masked: a session's
        numbers never depend on who else is in the batch, and the shapes never change (compile, CUDA
        graphs). Without it, only the batch's rows run, which is cheaper on a CPU at low occupancy."""
        m = self.model
        rows = slots if not self.static else list(range(self.slots))
        index = {slot: r for r, slot in enumerate(rows)}
        h = torch.zeros(len(rows), m.cfg.lfm.hidden_size, dtype=m.dtype, device=m.device)
        step = [b for b, f in enumerate(feeds) if f is not None]
        if step:
            x = torch.zeros_like(h)
            pos = torch.zeros(len(rows), dtype=torch.long)
            active = torch.zeros(len(rows), dtype=torch.bool)
            at = [index[slots[b]] for b in step]
            x[at] = self._embed_feeds([feeds[b] for b in step])
            pos[at] = torch.tensor([positions[b] for b in step])
            active[at] = True
            if self.compiled is not None:
                out = self.compiled.backbone_step(x, pos.to(m.device), active.to(m.device))
            elif self.static:
                out = m.lfm(x[:, None], self.state, pos, active=active.to(m.device), kv_len=self.capacity)[:, 0]
            else:
                out = m.lfm(x[:, None], self.state, pos, rows=torch.tensor(rows, device=m.device),
                            active=active.to(m.device), kv_len=int(pos.max()) + 1)[:, 0]
            h[at] = out[at]
        for b, hb in enumerate(hidden):
            if hb is not None:
                h[index[slots[b]]] = hb
        want_all: list[Modality | None] = [None] * len(rows)
        sampling_all: list[RowSampling | None] = [None] * len(rows)
        for b, slot in enumerate(slots):
            want_all[index[slot]], sampling_all[index[slot]] = want[b], sampling[b]
        items = sample_items(m, h, want_all, sampling_all, self.compiled, all_rows=self.static)
        return [items[index[slot]] for slot in slots]

    def _embed_feeds(self, feeds: list[tuple[Modality, int | tuple[int, ...]]]) -> Tensor:
        m = self.model
        x = torch.empty(len(feeds), m.cfg.lfm.hidden_size, dtype=m.dtype, device=m.device)
        text = [b for b, (k, _) in enumerate(feeds) if k == Modality.TEXT]
        audio = [b for b, (k, _) in enumerate(feeds) if k != Modality.TEXT]
        if text:
            x[text] = m.embed_text(torch.tensor([feeds[b][1] for b in text], device=m.device))
        if audio:
            x[audio] = m.embed_frames(torch.tensor([feeds[b][1] for b in audio], device=m.device))
        return x

    @torch.inference_mode()
    def speak(self, slots: list[int], frames: list[tuple[int, ...]]) -> list[np.ndarray]:
        """One audio frame per slot -> PCM chunks (24 kHz float32)."""
        pcm = self.speech.step(torch.tensor(frames, dtype=torch.long), slots)
        return [p.numpy() for p in pcm]

    def start_speech(self, slots: list[int]) -> None:
        self.speech.start(slots)

    def finish_speech(self, slots: list[int]) -> list[np.ndarray]:
        return [p.numpy() for p in self.speech.finish(slots)]
