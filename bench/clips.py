"""The synthetic 16 kHz speech-like user clips both implementations hear (also the golden recordings').

The reference's side cannot import this module (it runs in the reference's venv, with none of our code),
so the clips travel as a safetensors file: "warmup", then "turn0", "turn1", ..., and their sample rate
in the file's metadata ("sample_rate").
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.defaults import INPUT_RATE

__all__ = ["CLIP_SECONDS", "clip", "read_clips", "write_clips"]

CLIP_SECONDS = 4.0  # a user turn
WARMUP_CLIP = (1.0, 99)  # seconds, seed of the throwaway warm-up turn


def clip(seconds: float, seed: int) -> torch.Tensor:
    """A voiced-speech-like 16 kHz signal: a gliding 120 Hz fundamental with harmonics, a 3 Hz syllable
    envelope, a little noise; float32."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * INPUT_RATE)) / INPUT_RATE
    f0 = 120 + 40 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / INPUT_RATE
    x = sum(torch.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t) ** 2)
    return (0.2 * x + 0.02 * torch.randn(t.shape, generator=g)).float()


def write_clips(path: Path, turns: int, seconds: float = CLIP_SECONDS) -> Path:
    """The warm-up clip and `turns` user clips (seeds 0, 1, ...) in one file."""
    clips = {"warmup": clip(*WARMUP_CLIP)} | {f"turn{i}": clip(seconds, i) for i in range(turns)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(clips, str(path), metadata={"sample_rate": str(INPUT_RATE)})
    return path


def read_clips(path: Path) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(warm-up clip, user clips in turn order)."""
    clips = load_file(str(path))
    return clips["warmup"], [clips[f"turn{i}"] for i in range(len(clips) - 1)]
