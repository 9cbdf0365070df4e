"""Audio output head: the depthformer (RQ-transformer depth decoder), lfm2-audio-model.md section 2.7.

One audio frame = 8 sequential codebook steps over a 6-layer transformer whose KV cache lives for that
frame only (positions 0..7). Everything here is batched over rows; sampling is a callback so that the
caller owns per-row settings and generators.

Numerics that differ from the backbone on purpose: RMSNorm multiplies by the weight in fp32 before the
cast, and RoPE uses the interleaved-pair (complex) convention with an fp32 complex table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import EOA, DepthformerConfig
from models.lfm2 import SwiGLU

__all__ = ["CodebookEmbedding", "DepthRMSNorm", "Depthformer", "FusedSwiGLU"]


class DepthRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)


class CodebookEmbedding(nn.Module):
    """An embedding table with its own output norm and logits projection (reference: SharedEmbedding)."""

    def __init__(self, dim: int, vocab: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.embedding_norm = DepthRMSNorm(dim, eps)
        self.to_logits = nn.Linear(dim, vocab, bias=False)

    def logits(self, x: Tensor) -> Tensor:
        return self.to_logits(self.embedding_norm(x))


def _rope_rotations(head_dim: int, positions: int, theta: float) -> Tensor:
    """Interleaved-pair RoPE as one rotation matrix per position: [positions, head_dim, head_dim] fp32.
    `x @ R[p]` equals rotating each pair (x[2j], x[2j+1]) as the complex number x[2j] + i x[2j+1] by
    the reference's complex64 table e^{i p f_j}, in one op instead of a complex view round trip."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim))
    angles = torch.outer(torch.arange(positions, dtype=torch.float32, device="cpu"), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)  # the reference's complex64 table
    cos, sin = rot.real, rot.imag
    R = torch.zeros(positions, head_dim, head_dim, device="cpu")
    j = torch.arange(0, head_dim, 2, device="cpu")
    R[:, j, j], R[:, j + 1, j] = cos, -sin  # real part: a cos - b sin
    R[:, j, j + 1], R[:, j + 1, j + 1] = sin, cos  # imaginary part: a sin + b cos
    return R


class _QKNorm(nn.Module):
    # Only holds the per-head norms, under the reference's `bounded_attention` name.
    def __init__(self, head_dim: int, eps: float) -> None:
        super().__init__()
        self.q_layernorm = DepthRMSNorm(head_dim, eps)
        self.k_layernorm = DepthRMSNorm(head_dim, eps)


class DepthAttention(nn.Module):
    def __init__(self, cfg: DepthformerConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.dim, cfg.dim + 2 * self.n_kv * self.head_dim, bias=False)
        self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.bounded_attention = _QKNorm(self.head_dim, cfg.norm_eps)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, step: int, rot: Tensor) -> Tensor:
        """x [B, dim] at position `step`; keys/values [B, kv_heads, 8, head_dim] filled up to `step`;
        rot: the RoPE rotation of position `step`."""
        B, H, KV, hd = x.shape[0], self.n_heads, self.n_kv, self.head_dim
        qkv = self.qkv_proj(x)
        # q and k heads are adjacent in the projection: normalise and rotate them in one go (the same
        # arithmetic as the reference's separate per-head norms and complex RoPE, in fewer ops).
        qk = qkv[:, : (H + KV) * hd].view(B, H + KV, hd)
        norms = self.bounded_attention
        weight = torch.cat([norms.q_layernorm.weight.expand(H, hd), norms.k_layernorm.weight.expand(KV, hd)])
        qk = (F.rms_norm(qk.float(), (hd,), eps=norms.q_layernorm.eps) * weight).type_as(x)
        qk = (qk.float() @ rot).type_as(x)
        q, k = qk[:, :H], qk[:, H:]
        v = qkv[:, (H + KV) * hd:]
        keys[:, :, step] = k
        values[:, :, step] = v.view(B, KV, hd)
        out = F.scaled_dot_product_attention(
            q[:, :, None], keys[:, :, : step + 1], values[:, :, : step + 1], enable_gqa=True
        )
        return self.out_proj(out.reshape(B, -1))


class FusedSwiGLU(nn.Module):
    """SwiGLU with w1 and w3 stacked into one matrix: one matrix-vector product per pass instead of two
    (and one packed int8/int4 matrix). Each output is the same dot product; a one-row product (one
    session) is bit-identical, a batched one may round in another order (tests/models/test_depthformer.py).
    Applied at load for bf16 and quantized weights, not fp32 (the parity dtype)."""

    def __init__(self, ffn: SwiGLU) -> None:
        super().__init__()
        self.ff_dim = ffn.w1.out_features
        w = torch.cat([ffn.w1.weight.detach(), ffn.w3.weight.detach()])
        self.w13 = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        self.w13.weight = nn.Parameter(w, requires_grad=False)
        self.w2 = ffn.w2

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.ff_dim, dim=-1)
        return self.w2(F.silu(gate) * up)


class DepthBlock(nn.Module):
    def __init__(self, cfg: DepthformerConfig) -> None:
        super().__init__()
        self.operator = DepthAttention(cfg)
        self.operator_norm = DepthRMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = DepthRMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = SwiGLU(cfg.dim, cfg.ff_dim)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, step: int, rot: Tensor) -> Tensor:
        h = self.operator(self.operator_norm(x), keys, values, step, rot) + x
        return h + self.feed_forward(self.ffn_norm(h))


class Depthformer(nn.Module):
    """The 6-layer depth transformer (`depthformer.layers.*`); `frame` runs one audio frame."""

    def __init__(self, cfg: DepthformerConfig, codebooks: int = 8) -> None:
        super().__init__()
        self.cfg = cfg
        self.codebooks = codebooks
        self.layers = nn.ModuleList(DepthBlock(cfg) for _ in range(cfg.layers))
        self._rope = _rope_rotations(cfg.head_dim, codebooks, cfg.rope_theta)

    def fuse_feed_forward(self) -> None:
        """After loading (the official names have w1 and w3 apart): stack each layer's w1 and w3."""
        for layer in self.layers:
            if isinstance(layer.feed_forward, SwiGLU):
                layer.feed_forward = FusedSwiGLU(layer.feed_forward)

    def frame(
        self,
        z: Tensor,
        embeddings: nn.ModuleList,
        pick: Callable[[int, Tensor], Tensor],
    ) -> Tensor:
        """z [B, codebooks, dim] (depth_linear output); embeddings: the per-codebook CodebookEmbedding;
        pick(i, logits [B, 2049]) -> tokens [B]. Returns codes [B, codebooks]; a frame whose codebook 0
        is end-of-audio becomes all end-of-audio."""
        B, C, _ = z.shape
        cfg = self.cfg
        cache_shape = (B, cfg.num_kv_heads, C, cfg.head_dim)
        keys = [z.new_empty(cache_shape) for _ in self.layers]
        values = [z.new_empty(cache_shape) for _ in self.layers]
        rope = self._rope.to(z.device)
        prev = torch.zeros_like(z[:, 0])
        codes = []
        for i in range(C):
            x = z[:, i] + prev
            for layer, k, v in zip(self.layers, keys, values, strict=True):
                x = layer(x, k, v, i, rope[i])
            token = pick(i, embeddings[i].logits(x))
            codes.append(token)
            prev = embeddings[i].embedding(token)
        out = torch.stack(codes, dim=1)
        return torch.where(out[:, :1] == EOA, torch.full_like(out, EOA), out)
