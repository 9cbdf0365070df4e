"""Batched sampling with per-row settings and per-row seeded generators (lfm2-audio-model.md 4.5).

Per row: greedy (argmax) when temperature <= 0 or top_k == 1; otherwise logits / T, keep the values
>= the k-th largest (ties kept; top_k 0 = no limit), softmax, and draw one sample. The draw is the
exponential race `argmax(p / E)` with E ~ Exp(1), which has the same distribution as
`torch.multinomial`. The noise E is drawn first, from each row's own generator, so that (1) a
session's output depends only on its own seed, never on who else shares the batch, and (2) the rest
is pure tensor arithmetic with static shapes and no host sync, which a compiled step can contain.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.defaults import SamplingParams  # plain data, defined with the defaults (no torch there)

__all__ = ["SamplingParams", "draw_noise", "kmax_bound", "sample", "sample_with_noise"]


def draw_noise(generators: list[torch.Generator | None], greedy: list[bool], shape: tuple[int, ...],
               device: torch.device | str = "cpu") -> Tensor:
    """Exp(1) noise [rows, *shape], each row from its own generator; greedy rows get ones (unused)."""
    noise = torch.ones((len(generators), *shape), device=device)
    for row, (gen, g) in enumerate(zip(generators, greedy, strict=True)):
        if not g:
            noise[row].exponential_(generator=gen)
    return noise


def sample_with_noise(logits: Tensor, temperature: Tensor, top_k: Tensor, noise: Tensor, kmax: int = 0) -> Tensor:
    """logits [B, V]; temperature [B]; top_k [B] long; noise [B, V] ~ Exp(1). Returns [B] long.
    kmax: a bound on every row's effective k, fixed by the caller so that shapes stay static: 1 when all
    rows are greedy (no sampling work at all), else any value >= the largest k (0: no bound known)."""
    V = logits.shape[-1]
    if kmax == 1:
        return logits.argmax(-1)
    greedy = (temperature <= 0) | (top_k == 1)
    scaled = logits.float() / torch.where(greedy, 1.0, temperature.float())[:, None]
    k = torch.where((top_k <= 0) | (top_k > V), V, top_k)
    if 0 < kmax < V:  # the k-th largest value from a partial sort
        kth = scaled.topk(kmax, dim=-1).values.gather(1, (k.clamp(max=kmax) - 1)[:, None])
    else:
        kth = scaled.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    probs = scaled.masked_fill(scaled < kth, float("-inf")).softmax(-1)
    return torch.where(greedy, logits.argmax(-1), (probs / noise).argmax(-1))


def kmax_bound(params: list[SamplingParams], vocab: int) -> int:
    """The `kmax` for sample_with_noise: 1 if all greedy, else the largest k rounded up to a power of two
    (a few static variants), or the vocabulary when some row has no limit."""
    ks = [p.top_k for p in params if not p.greedy]
    if not ks:
        return 1
    if any(k <= 0 or k >= vocab for k in ks):
        return vocab
    return min(vocab, 1 << (max(ks) - 1).bit_length())


def sample(logits: Tensor, temperature: Tensor, top_k: Tensor, generators: list[torch.Generator | None]) -> Tensor:
    """Eager convenience: draws the noise, then samples. Returns [B] long."""
    greedy = ((temperature <= 0) | (top_k == 1)).tolist()
    if all(greedy):
        return logits.argmax(-1)
    noise = draw_noise(generators, greedy, (logits.shape[-1],), logits.device)
    kmax = int(torch.where(top_k <= 0, logits.shape[-1], top_k).max())
    return sample_with_noise(logits, temperature.to(logits.device), top_k.to(logits.device), noise, kmax)
