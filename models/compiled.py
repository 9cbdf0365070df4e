"""Decode steps compiled with torch.compile (optional; imported lazily behind a flag).

Each function has fixed shapes for a fixed number of rows, so it compiles once: the audio frame
(depth_linear, the 8 codebook steps through the depthformer, sampling from pre-drawn noise, the
end-of-audio rule) and the backbone decode step over all rows of a state, with an `active` mask and
the whole KV capacity. On a CPU this removes most per-op dispatch overhead, which is what bounds a
small model; a large model's matrix products are bound by memory bandwidth either way. The same
static shapes are what CUDA graphs need.

The arithmetic is the eager modules'; inductor may fuse reductions in another order, so results
agree to float rounding (tests check the greedy sequences stay identical).

On CUDA the steps are captured as CUDA graphs (mode "reduce-overhead"): one launch per step instead of
hundreds of kernels. What that needs, and what tests/models/test_graph_safe.py checks on a CPU: every
input a device tensor of a fixed shape, the state updated in place at static addresses (marked so
that the graphs may write them), no host sync inside a step (no .item(), .tolist(), data-dependent
shapes), and no CPU tensor inside the graph (the RoPE tables are moved to the model's device here).
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
        device = model.device
        if mode is None and device.type == "cuda":
            mode = "reduce-overhead"
        _tables_on(model, device)
        for t in (*state.conv, *state.keys, *state.values):
            if t is not None:
                torch._dynamo.mark_static_address(t)  # written in place by the graphs, never reallocated
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


def _tables_on(model: LFM2AudioModel, device: torch.device) -> None:
    """The RoPE tables are plain tensors (no buffers: not in the checkpoint) built on the CPU; a graph
    must not read a CPU tensor, so they move to the model's device once (the eager `.to` is then a no-op)."""
    model.lfm._inv_freq = model.lfm._inv_freq.to(device)
    model.depthformer._rope = model.depthformer._rope.to(device)
