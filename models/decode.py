"""Batched model steps over backbone rows: prefill a row's new inputs, and one decode step for many rows.

These are the only two ways the backbone state advances; the serving engine (streaming/runner.py), which
also drives the single-session path, is built from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from models.compiled import CompiledSteps

from models.config import AUDIO_VOCAB
from models.generation import Modality
from models.lfm2 import BackboneState
from models.lfm2_audio import LFM2AudioModel
from models.sampling import SamplingParams, draw_noise, kmax_bound, sample, sample_with_noise

__all__ = ["RowSampling", "prefill", "sample_items"]


@dataclass
class RowSampling:
    text: SamplingParams
    audio: SamplingParams
    generator: torch.Generator | None = None


@torch.inference_mode()
def prefill(model: LFM2AudioModel, state: BackboneState, row: int, position: int, x: Tensor) -> Tensor:
    """Run x [T, hidden] on top of row's state (which holds `position` positions). Returns the
    hidden state of the last position [hidden]."""
    h = model.lfm(x[None].to(model.dtype), state, torch.tensor([position]), rows=torch.tensor([row]),
                  kv_len=position + x.shape[0])
    return h[0, -1]


def sample_items(
    model: LFM2AudioModel,
    h: Tensor,
    want: list[Modality | None],
    sampling: list[RowSampling | None],
    compiled: CompiledSteps | None = None,
    all_rows: bool = False,
) -> list[int | tuple[int, ...] | None]:
    """Sample the next item of each row from its backbone output h [B, hidden] (None where want is None).
    all_rows: run the heads over every row of h, whatever each row wants, so that a row's result never
    depends on which other rows share the batch (the matrix products then always have the same shape)."""
    out: list[int | tuple[int, ...] | None] = [None] * len(want)
    for kind in (Modality.TEXT, Modality.AUDIO_OUT):
        rows = [b for b, w in enumerate(want) if w == kind]
        if not rows:
            continue
        run = list(range(len(want))) if all_rows else rows
        params = [_params_of(sampling[b], kind) if b in rows else SamplingParams() for b in run]
        gens = [sampling[b].generator if b in rows else None for b in run]
        t, k = _params(params, h.device)
        greedy = [p.greedy for p in params]
        if kind == Modality.TEXT:
            values = sample(model.text_logits(h[run]), t, k, gens).tolist()
        else:
            kmax = kmax_bound(params, AUDIO_VOCAB)
            shape = (model.cfg.codebooks, AUDIO_VOCAB)
            noise = (draw_noise(gens, greedy, shape, h.device) if kmax != 1
                     else torch.ones(len(run), *shape, device=h.device))
            if compiled is not None:
                frames = compiled.audio_frame(h[run], t, k, noise, kmax)
            else:
                frames = model.audio_frame(h[run], partial(_pick, t=t, k=k, noise=noise, kmax=kmax))
            values = [tuple(f) for f in frames.tolist()]
        for b, value in zip(run, values, strict=True):
            if b in rows:
                out[b] = value
    return out


def _pick(i: int, logits: Tensor, *, t: Tensor, k: Tensor, noise: Tensor, kmax: int) -> Tensor:
    return sample_with_noise(logits, t, k, noise[:, i], kmax)


def _params_of(s: RowSampling, kind: Modality) -> SamplingParams:
    return s.text if kind == Modality.TEXT else s.audio


def _params(params: list[SamplingParams], device: torch.device) -> tuple[Tensor, Tensor]:
    temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
    top_k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=device)
    return temperature, top_k
