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
from models.sampling import SamplingParams
from models.speech import SpeechDecoder, pick_decoder

__all__ = ["Runner"]


class Runner:
    def __init__(self, ckpt: Checkpoint, *, slots: int, capacity: int, decoder: str = "auto",
                 compile: bool = False) -> None:
        self.model = ckpt.model
        self.slots = slots
        self.capacity = capacity
        m = self.model
        self.state = BackboneState.allocate(m.cfg.lfm, slots, capacity, device=m.device, dtype=m.dtype)
        self.speech = SpeechDecoder(pick_decoder(ckpt, decoder), rows=slots)
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
        (feeds[b]) or already has its hidden state (hidden[b], the step right after a prefill)."""
        m = self.model
        h = torch.empty(len(slots), m.cfg.lfm.hidden_size, dtype=m.dtype, device=m.device)
        step_rows = [b for b, f in enumerate(feeds) if f is not None]
        if step_rows:
            x = self._embed_feeds([feeds[b] for b in step_rows])
            rows = [slots[b] for b in step_rows]
            pos = [positions[b] for b in step_rows]
            if self.compiled is not None:
                h[step_rows] = self._compiled_step(rows, pos, x)
            else:
                out = m.lfm(x[:, None], self.state, torch.tensor(pos), rows=torch.tensor(rows, device=m.device),
                            kv_len=max(pos) + 1)
                h[step_rows] = out[:, 0]
        for b, hb in enumerate(hidden):
            if hb is not None:
                h[b] = hb
        if self.compiled is not None:
            return self._compiled_sample(h, want, sampling)
        return sample_items(m, h, want, sampling)

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

    def _compiled_step(self, rows: list[int], positions: list[int], x: Tensor) -> Tensor:
        # Shape-static: all slots run, only `rows` write state.
        m = self.model
        x_all = torch.zeros(self.slots, x.shape[-1], dtype=m.dtype, device=m.device)
        pos = torch.zeros(self.slots, dtype=torch.long, device=m.device)
        active = torch.zeros(self.slots, dtype=torch.bool, device=m.device)
        idx = torch.tensor(rows, device=m.device)
        x_all[idx], pos[idx], active[idx] = x, torch.tensor(positions, device=m.device), True
        return self.compiled.backbone_step(x_all, pos, active)[idx]

    def _compiled_sample(self, h: Tensor, want: list[Modality], sampling: list[RowSampling]) -> list:
        # Pad the batch to all slots so that the compiled frame keeps one shape.
        B = h.shape[0]
        pad = self.slots - B
        if pad > 0:
            h = torch.cat([h, h.new_zeros(pad, h.shape[-1])])
            want = want + [Modality.AUDIO_OUT] * pad
            sampling = sampling + [RowSampling(SamplingParams(), SamplingParams())] * pad
        return sample_items(self.model, h, want, sampling, self.compiled)[:B]

    @torch.inference_mode()
    def speak(self, slots: list[int], frames: list[tuple[int, ...]]) -> list[np.ndarray]:
        """One audio frame per slot -> PCM chunks (24 kHz float32)."""
        pcm = self.speech.step(torch.tensor(frames, dtype=torch.long), slots)
        return [p.numpy() for p in pcm]

    def start_speech(self, slots: list[int]) -> None:
        self.speech.start(slots)

    def finish_speech(self, slots: list[int]) -> list[np.ndarray]:
        return [p.numpy() for p in self.speech.finish(slots)]
