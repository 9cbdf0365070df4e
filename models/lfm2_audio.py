"""The composed LFM2-Audio model: the official module tree (and so the official tensor names) plus the
few operations an engine needs: embed inputs, run the backbone on a row's state, turn a hidden state
into a text token or an audio frame.

    model.embed_text(ids) / model.embed_frames(codes) / model.encode_audio(mels)  -> input embeddings
    h = model.lfm(x, state, positions, rows=...)                                 -> backbone (models/lfm2.py)
    model.text_logits(h) / model.audio_frame(h, pick)                            -> next items
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import AUDIO_VOCAB, AudioModelConfig
from models.conformer import AudioAdapter, ConformerEncoder
from models.depthformer import CodebookEmbedding, Depthformer
from models.lfm2 import LFM2

__all__ = ["LFM2AudioModel"]


class LFM2AudioModel(nn.Module):
    def __init__(self, cfg: AudioModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hidden, dim, n_cb = cfg.lfm.hidden_size, cfg.depthformer.dim, cfg.codebooks
        self.lfm = LFM2(cfg.lfm)
        self.conformer = ConformerEncoder(cfg.encoder)
        self.audio_adapter = AudioAdapter(cfg.encoder.out_dim, hidden)
        self.audio_embedding = CodebookEmbedding(hidden, AUDIO_VOCAB * n_cb)
        self.depthformer = Depthformer(cfg.depthformer, n_cb)
        self.depth_linear = nn.Linear(hidden, dim * n_cb)
        self.depth_embeddings = nn.ModuleList(CodebookEmbedding(dim, AUDIO_VOCAB) for _ in range(n_cb))
        # Persistent buffers of the official file; the loss weights are for training only.
        self.register_buffer("codebook_offsets", torch.arange(n_cb) * AUDIO_VOCAB)
        if cfg.codebook_weight == "log":
            weights = (torch.linspace(1, 0, n_cb) * math.log(cfg.semantic_codebook_factor)).exp()
        else:
            weights = torch.ones(n_cb)
            weights[0] *= cfg.semantic_codebook_factor
        self.register_buffer("audio_loss_weights", weights)
        # models/quant.py: "dense", or the packed format of the decode path's linear layers, whose
        # text head is then a quantized copy of the tied table (the table still serves the lookups).
        self.weights = "dense"
        self.text_head: nn.Module | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.lfm.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lfm.embed_tokens.weight.device

    def embed_text(self, ids: Tensor) -> Tensor:
        return self.lfm.embed_tokens(ids)

    def embed_frames(self, codes: Tensor) -> Tensor:
        """codes [..., codebooks] -> [..., hidden]: the sum of one raw embedding row per codebook."""
        rows = self.audio_embedding.embedding(codes + self.codebook_offsets)
        return rows.sum(-2, dtype=self.dtype)

    def encode_audio(self, mels: list[Tensor]) -> list[Tensor]:
        """Log-mel clips [features, T_i] -> per-clip input embeddings [ceil(T_i / 8), hidden]: the encoder's
        validated batching (ConformerEncoder.encode_clips), then the adapter."""
        return [self.audio_adapter(f) for f in self.conformer.encode_clips(mels)]

    def text_logits(self, h: Tensor) -> Tensor:
        """h [B, hidden] -> [B, vocab] through the tied text head."""
        if self.text_head is not None:
            return self.text_head(h)
        return F.linear(h, self.lfm.embed_tokens.weight)

    def audio_frame(self, h: Tensor, pick: Callable[[int, Tensor], Tensor]) -> Tensor:
        """h [B, hidden] -> codes [B, codebooks]; pick(i, logits [B, 2049]) samples codebook i."""
        z = self.depth_linear(h).unflatten(-1, (self.cfg.codebooks, self.cfg.depthformer.dim))
        return self.depthformer.frame(z, self.depth_embeddings, pick)
