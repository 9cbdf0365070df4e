"""LFM2 backbone: gated short convolutions and GQA attention with QK-norm, with explicit per-row state.

Semantics follow HF `Lfm2Model` (lfm2-audio-model.md section 2.2). The state is passed in, never kept on
the module, so that one model instance serves every engine slot:

    state = BackboneState.allocate(cfg, rows=S, capacity=max_context)
    h = lfm(x, state, positions)                  # rows 0..B-1, T new positions each
    h = lfm(x, state, positions, rows=slot_ids)   # any subset of rows, in any order

Every row brings T new positions on top of what its state already holds (`positions[b]` is the
number of positions already in row b's state). T=1 is a decode step, T>1 a prefill chunk; both give
the same result as one full-sequence pass. Rows not named in `rows` (or masked out by `active`) keep
their state bit-identical.

The same module runs the LFM2.5 detokenizer's backbone, where attention layers use a causal
sliding window and the KV cache is a ring of `capacity` entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import LFM2Config

__all__ = ["LFM2", "Attention", "BackboneState", "Block", "RMSNorm", "ShortConv", "SwiGLU"]


class RMSNorm(nn.Module):
    """HF Lfm2RMSNorm: normalise in fp32, cast back to the input dtype, then multiply by the weight."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, ff_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, ff_dim, bias=False)
        self.w3 = nn.Linear(dim, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass
class BackboneState:
    """Per-row caches. `conv[i]` is `[rows, hidden, L_cache]` (the last values of B*x) for a conv
    layer i, `keys[i]`/`values[i]` are `[rows, kv_heads, capacity, head_dim]` for an attention layer i;
    the other entries are None. With a sliding window the KV cache is a ring indexed by position % capacity."""

    conv: list[Tensor | None]
    keys: list[Tensor | None]
    values: list[Tensor | None]
    capacity: int
    window: int | None

    @classmethod
    def allocate(
        cls, cfg: LFM2Config, rows: int, capacity: int, *, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> BackboneState:
        window = cfg.sliding_window if "sliding_attention" in cfg.layer_types else None
        conv: list[Tensor | None] = []
        keys: list[Tensor | None] = []
        values: list[Tensor | None] = []
        kv_shape = (rows, cfg.num_key_value_heads, capacity, cfg.head_dim)
        for i in range(cfg.num_hidden_layers):
            if cfg.is_attention(i):
                conv.append(None)
                keys.append(torch.zeros(kv_shape, device=device, dtype=dtype))
                values.append(torch.zeros(kv_shape, device=device, dtype=dtype))
            else:
                conv.append(torch.zeros(rows, cfg.hidden_size, cfg.conv_L_cache, device=device, dtype=dtype))
                keys.append(None)
                values.append(None)
        return cls(conv, keys, values, capacity, window)

    @property
    def rows(self) -> int:
        t = next(t for t in (*self.conv, *self.keys) if t is not None)
        return t.shape[0]

    def reset_rows(self, rows: Tensor | list[int]) -> None:
        """Start the given rows afresh. KV entries need no clearing: attention only sees positions
        below a row's current length, and those are rewritten before they are read."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        for c in self.conv:
            if c is not None:
                c[rows.to(c.device)] = 0

    def snapshot_row(self, row: int) -> list[Tensor | None]:
        """A copy of one row's conv state: with the position it holds now, all that row needs to come back to
        this point later (restore_row). The KV cache needs no copy: entries past a row's position are never read
        and are rewritten before they are, so going back to a position truncates it. Not for a ring cache (a
        sliding window overwrites entries still in view)."""
        if self.window is not None:
            raise ValueError("a sliding-window (ring) KV cache cannot be truncated back to a snapshot")
        return [None if c is None else c[row].clone() for c in self.conv]

    def restore_row(self, row: int, snapshot: list[Tensor | None]) -> None:
        """Put back a row's conv state from snapshot_row, in place (compiled steps keep their addresses); the
        caller goes back to the position the row held then."""
        if len(snapshot) != len(self.conv):
            raise ValueError(f"a snapshot of {len(snapshot)} layers for a state of {len(self.conv)}")
        for c, saved in zip(self.conv, snapshot, strict=True):
            if c is not None:
                c[row].copy_(saved)


@dataclass
class _StepContext:
    """What every layer of one forward call shares: row indexing, positions, RoPE tables, the mask."""

    rows: Tensor | None  # [B] slot index per batch row, or None for "rows 0..B-1 in order"
    active: Tensor | None  # [B] bool; inactive rows compute but write no state
    write_rows: Tensor  # [B, T] slot index of each new position
    write_index: Tensor  # [B, T] cache index of each new position
    kv_len: int  # how many cache entries attention reads
    cos: Tensor  # [B, 1, T, head_dim]
    sin: Tensor
    mask: Tensor | None  # [B, 1, T, kv_len] bool, True = may attend


def _masked_update(cache: Tensor, index: tuple[Tensor, ...], new: Tensor, active: Tensor | None) -> None:
    if active is not None:
        keep = active.view(-1, *([1] * (new.dim() - 1)))
        new = torch.where(keep, new, cache[index])
    cache[index] = new


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class ShortConv(nn.Module):
    """Gated short convolution: in_proj -> (B, C, x); y = C * causal_depthwise_conv(B * x); out_proj."""

    def __init__(self, cfg: LFM2Config) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.L = cfg.conv_L_cache
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.conv = nn.Conv1d(d, d, kernel_size=self.L, groups=d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, state: Tensor, ctx: _StepContext) -> Tensor:
        T = x.shape[1]
        b, c, h = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)
        bx = b * h  # [B, D, T]
        prev = state if ctx.rows is None else state[ctx.rows]
        if ctx.rows is None and prev.shape[0] != bx.shape[0]:
            prev = prev[: bx.shape[0]]
        ext = torch.cat([prev, bx], dim=-1)  # [B, D, L + T]
        conv = F.conv1d(ext[..., 1:], self.conv.weight, groups=ext.shape[1])  # [B, D, T]
        new_state = ext[..., -self.L:]
        rows = ctx.rows if ctx.rows is not None else torch.arange(bx.shape[0], device=bx.device)
        _masked_update(state, (rows,), new_state, ctx.active)
        y = c * conv[..., -T:]
        return self.out_proj(y.transpose(1, 2))


class Attention(nn.Module):
    """GQA attention with per-head RMSNorm on q and k before RoPE (rotate-half convention)."""

    def __init__(self, cfg: LFM2Config) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.q_layernorm = RMSNorm(self.head_dim, cfg.norm_eps)
        self.k_layernorm = RMSNorm(self.head_dim, cfg.norm_eps)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, ctx: _StepContext) -> Tensor:
        B, T, _ = x.shape
        q = self.q_layernorm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_layernorm(self.k_proj(x).view(B, T, self.n_kv, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * ctx.cos + _rotate_half(q) * ctx.sin
        k = k * ctx.cos + _rotate_half(k) * ctx.sin
        index = (ctx.write_rows, slice(None), ctx.write_index)
        _masked_update(keys, index, k.transpose(1, 2), ctx.active)
        _masked_update(values, index, v.transpose(1, 2), ctx.active)
        if ctx.rows is None:
            k_all, v_all = keys[:B, :, : ctx.kv_len], values[:B, :, : ctx.kv_len]
        else:
            k_all, v_all = keys[ctx.rows, :, : ctx.kv_len], values[ctx.rows, :, : ctx.kv_len]
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=ctx.mask, enable_gqa=True)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, cfg: LFM2Config, layer: int) -> None:
        super().__init__()
        self.is_attention = cfg.is_attention(layer)
        if self.is_attention:
            self.self_attn = Attention(cfg)
        else:
            self.conv = ShortConv(cfg)
        self.feed_forward = SwiGLU(cfg.hidden_size, cfg.ff_dim)
        self.operator_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)

    def forward(self, x: Tensor, state: BackboneState, layer: int, ctx: _StepContext) -> Tensor:
        h = self.operator_norm(x)
        if self.is_attention:
            h = self.self_attn(h, state.keys[layer], state.values[layer], ctx)
        else:
            h = self.conv(h, state.conv[layer], ctx)
        h = h + x
        return h + self.feed_forward(self.ffn_norm(h))


class LFM2(nn.Module):
    """The LFM2 model body: `embed_tokens`, the layers, and the final norm (`embedding_norm`)."""

    def __init__(self, cfg: LFM2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.embedding_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        hd = cfg.head_dim
        self._inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device="cpu") / hd))

    def rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # The reference casts the model (its inv_freq buffer included) to the model dtype, then
        # computes cos/sin in fp32 and casts them to the activations' dtype. Keep both roundings.
        inv = self._inv_freq.to(positions.device).to(self.embedding_norm.weight.dtype).float()
        freqs = positions[..., None].float() * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self,
        x: Tensor,
        state: BackboneState,
        positions: Tensor,
        *,
        rows: Tensor | None = None,
        active: Tensor | None = None,
        kv_len: int | None = None,
    ) -> Tensor:
        """x: [B, T, hidden] input embeddings. positions: [B] long, the positions already in each
        row's state. rows: [B] slot indices into the state (None = rows 0..B-1). active: [B] bool,
        rows that write no state. kv_len: an upper bound of positions + T over the batch (pass it
        to avoid a device sync). Returns the final-normed hidden states [B, T, hidden]."""
        T = x.shape[1]
        device = x.device
        positions = positions.to(device)
        pos = positions[:, None] + torch.arange(T, device=device)  # [B, T]
        ctx = self._context(pos, state, rows, active, kv_len, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, state, i, ctx)
        return self.embedding_norm(x)

    def _context(
        self, pos: Tensor, state: BackboneState, rows: Tensor | None, active: Tensor | None,
        kv_len: int | None, dtype: torch.dtype,
    ) -> _StepContext:
        B, T = pos.shape
        device = pos.device
        cos, sin = self.rope(pos, dtype)
        C = state.capacity
        end = pos[:, -1] + 1  # [B]
        if state.window is None:
            if kv_len is None:
                kv_len = int(end.max())
            if kv_len > C:
                raise ValueError(f"context overflow: {kv_len} positions > cache capacity {C}")
            L = kv_len
        else:
            L = C
            assert T + state.window - 1 <= C, "ring KV cache too small for this chunk"
        write_rows = (rows if rows is not None else torch.arange(B, device=device))[:, None].expand(B, T)
        write_index = pos % C
        mask = None
        if self.cfg.attention_layers:
            j = torch.arange(L, device=device)
            last = (end - 1)[:, None]
            key_pos = last - (last - j) % C  # [B, L] position held by each cache entry (<0: empty)
            qp = pos[:, :, None]  # [B, T, 1]
            kp = key_pos[:, None, :]  # [B, 1, L]
            allowed = (kp >= 0) & (kp <= qp)
            if state.window is not None:
                allowed &= kp > qp - state.window
            mask = allowed[:, None]
        return _StepContext(rows, active, write_rows, write_index, L, cos[:, None], sin[:, None], mask)
