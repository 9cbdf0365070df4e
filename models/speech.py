"""One interface over the two audio decoders (Mimi, the LFM2.5 detokenizer) for many streams.

Each row is one stream (one response). `start` resets rows, `step` decodes one frame per row, `finish`
returns each row's tail. The concatenation of a row's outputs equals the decoder's offline decode of
the same codes: the latency padding the LFM2.5 detokenizer puts at a stream's start is removed here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.config import EOA
from models.detokenizer import Detokenizer, DetokenizerState
from models.mimi import Mimi, MimiDecoderState

__all__ = ["SpeechDecoder", "is_speech", "pick_decoder"]



def is_speech(frame: tuple[int, ...]) -> bool:
    """A generated frame is played unless it is the end-of-audio frame (codebook 0 is EOA)."""
    return frame[0] != EOA


class SpeechDecoder:
    def __init__(self, module: Mimi | Detokenizer, rows: int) -> None:
        self.module = module
        device = next(module.parameters()).device
        state_cls = MimiDecoderState if isinstance(module, Mimi) else DetokenizerState
        self.state = state_cls.allocate(module.cfg, rows, device=device)
        self.latency = module.latency_samples
        self.fresh = [True] * rows
        self.device = device

    @property
    def name(self) -> str:
        return "mimi" if isinstance(self.module, Mimi) else "lfm2.5"

    def start(self, rows: list[int]) -> None:
        self.state.reset_rows(rows)
        for r in rows:
            self.fresh[r] = True

    @torch.inference_mode()
    def step(self, frames: Tensor, rows: list[int]) -> list[Tensor]:
        """frames [B, 8] (no end-of-audio frames) -> one PCM chunk per row (1920 samples at 24 kHz;
        the first chunk of a stream is shorter by the decoder's latency)."""
        # Codebooks 1-7 may sample end-of-audio inside a normal frame; no decoder has a row for it.
        codes = frames.to(self.device).clamp(max=EOA - 1)
        pcm = self.module.step(codes, self.state, rows=torch.tensor(rows, device=self.device))
        out = []
        for b, r in enumerate(rows):
            chunk = pcm[b]
            if self.fresh[r]:
                chunk = chunk[self.latency:]
                self.fresh[r] = False
            out.append(chunk.float().cpu())
        return out

    @torch.inference_mode()
    def finish(self, rows: list[int]) -> list[Tensor]:
        tails = self.module.flush(self.state, rows=torch.tensor(rows, device=self.device))
        return [tails[b].float().cpu() if not self.fresh[r] else tails[b, :0].cpu() for b, r in enumerate(rows)]


def pick_decoder(ckpt, choice: str = "auto") -> Mimi | Detokenizer:
    """"mimi", "lfm2.5", or "auto": the LFM2.5 detokenizer where the checkpoint has one, else Mimi."""
    if choice not in ("auto", "mimi", "lfm2.5"):
        raise ValueError(f"decoder must be auto, mimi or lfm2.5, got {choice!r}")
    if choice == "mimi" or (choice == "auto" and ckpt.detokenizer is None):
        if ckpt.mimi is None:
            raise ValueError(f"{ckpt.directory} has no Mimi decoder ({'tokenizer-e351c8d8-checkpoint125.safetensors'})")
        return ckpt.mimi
    if ckpt.detokenizer is None:
        raise ValueError(f"{ckpt.directory} has no LFM2.5 detokenizer (audio_detokenizer/)")
    return ckpt.detokenizer
