"""Decode steps compiled with torch.compile (optional; imported lazily behind a flag).

Each function has fixed shapes for a fixed number of rows, so it compiles once: the audio frame
(depth_linear, the 8 codebook steps through the depthformer, sampling from pre-drawn noise, the
end-of-audio rule) and the backbone decode step over all rows of a state, with an `active` mask and
the whole KV capacity. On a CPU this removes most per-op dispatch overhead, which is what bounds a
small model; a large model's matrix products are bound by memory bandwidth either way. The same
static shapes are what CUDA graphs need.

The arithmetic is the eager modules'; inductor may fuse reductions in another order, so results
agree to float rounding (tests check the greedy sequences stay identical).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.lfm2 import BackboneState
from models.lfm2_audio import LFM2AudioModel
from models.sampling import sample_with_noise

__all__ = ["CompiledSteps"]


class CompiledSteps:
    def __init__(self, model: LFM2AudioModel, state: BackboneState, *, mode: str | None = None) -> None:
        self.model = model
        self.state = state
        self.rows = state.rows
        kw = {"dynamic": False, "fullgraph": True, "mode": mode}
        self._frame = torch.compile(self._audio_frame, **kw)
        self._step = torch.compile(self._backbone_step, **kw)

    def _audio_frame(self, h: Tensor, temperature: Tensor, top_k: Tensor, noise: Tensor, kmax: int) -> Tensor:
        return self.model.audio_frame(
            h, lambda i, logits: sample_with_noise(logits, temperature, top_k, noise[:, i], kmax))

    def _backbone_step(self, x: Tensor, positions: Tensor, active: Tensor) -> Tensor:
        return self.model.lfm(x[:, None], self.state, positions, active=active, kv_len=self.state.capacity)[:, 0]

    def audio_frame(self, h: Tensor, temperature: Tensor, top_k: Tensor, noise: Tensor, kmax: int) -> Tensor:
        """h [B, hidden], temperature [B], top_k [B], noise [B, 8, 2049], kmax (sampling.kmax_bound) ->
        codes [B, 8]. Compiles once per batch size B (keep B fixed: all slots) and kmax bucket."""
        with torch.inference_mode():
            return self._frame(h, temperature, top_k, noise, kmax)

    def backbone_step(self, x: Tensor, positions: Tensor, active: Tensor) -> Tensor:
        """All rows of the state, one position each: x [rows, hidden], positions [rows], active [rows]."""
        with torch.inference_mode():
            return self._step(x, positions, active)
