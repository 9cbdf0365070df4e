"""Batched sampling with per-row settings and per-row seeded generators (lfm2-audio-model.md 4.5).

Per row: greedy (argmax) when temperature <= 0 or top_k == 1; otherwise logits / T, keep the values
>= the k-th largest (ties kept; top_k 0 = no limit), softmax, and draw one sample. The draw uses the
exponential-race form `argmax(p / E)` with E ~ Exp(1), which has the same distribution as
`torch.multinomial` and lets every row use its own generator, so that a session's output depends only
on its own seed, never on who else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SamplingParams", "sample"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # <= 0: greedy
    top_k: int = 0  # 0: no limit; 1: greedy

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1


def sample(
    logits: Tensor,
    temperature: Tensor,
    top_k: Tensor,
    generators: list[torch.Generator | None],
) -> Tensor:
    """logits [B, V]; temperature [B] float; top_k [B] long; one generator per row (None: greedy row
    or the global RNG). Returns [B] long."""
    B, V = logits.shape
    greedy = (temperature <= 0) | (top_k == 1)
    best = logits.argmax(-1)
    if bool(greedy.all()):
        return best
    t = torch.where(greedy, torch.ones_like(temperature), temperature).to(torch.float32)
    scaled = logits.float() / t[:, None]
    k = torch.where((top_k <= 0) | (top_k > V), torch.full_like(top_k, V), top_k)
    kmax = int(k.max())
    kth = scaled.topk(kmax, dim=-1).values.gather(1, (k - 1)[:, None].to(logits.device))
    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(-1)
    noise = torch.empty_like(probs)
    for row in range(B):
        if not bool(greedy[row]):
            noise[row].exponential_(generator=generators[row])
        else:
            noise[row] = 1.0
    drawn = (probs / noise).argmax(-1)
    return torch.where(greedy.to(logits.device), best, drawn)
