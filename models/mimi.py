"""Kyutai's Mimi codec (moshi 0.2.12 `get_mimi` settings, 8 codebooks used): 24 kHz audio <-> 12.5 Hz codes.

Decoding streams with explicit per-row state, so one module serves every engine slot:

    state = MimiDecoderState.allocate(cfg, rows=S)
    pcm = mimi.step(codes, state)                  # codes [B, 8] -> pcm [B, 1920], rows 0..B-1
    pcm = mimi.step(codes, state, rows=slots)      # any subset of rows, in any order

The decode path is codes -> codebook sums -> 12.5->25 Hz transposed conv -> causal transformer
(context 250 steps, ring KV cache) -> SEANet decoder (x960). Every stage is causal, so a frame's
1920 samples come out as soon as its codes go in (`latency_samples = 0`).

The decoder transformer's attention reproduces moshi's streaming decode exactly, which differs from
its offline decode once a stream is longer than the context: moshi writes a frame's two keys into a
ring of `context` entries before attending, so the first query of a frame loses its oldest key. The
rule here (`_context`) is chunk-independent, so `decode` equals the concatenated `step` outputs.
Encoding is offline only and matches moshi's `encode` (plain context window).

Tensor names follow the moshi checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ConfigError
from models.seanet import CausalConv, CausalConvTranspose, SEANetDecoder, SEANetEncoder, nest

__all__ = ["Mimi", "MimiConfig", "MimiDecoderState", "MimiInputError", "random_state_dict"]

CONFIG_FILE = "mimi_config.json"
_EPS = 1e-5  # moshi's EuclideanCodebook epsilon: centroid = embedding_sum / max(cluster_usage, eps)
_DECODE_CHUNK = 125  # frames per pass in `decode` (10 s), bounds the attention matrix


class MimiInputError(ValueError):
    """Codes or audio of the wrong shape or type for Mimi."""


@dataclass(frozen=True, kw_only=True)
class MimiConfig:
    """Every size of the architecture. `MimiConfig()` is the official Mimi (moshi `get_mimi`)."""

    sample_rate: int = 24_000
    frame_rate: float = 12.5
    # SEANet encoder/decoder
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # decoder order; the encoder uses them reversed
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2
    # encoder and decoder transformers (same settings), at the SEANet rate (25 Hz)
    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    layer_scale: float = 0.01
    max_period: float = 10_000.0
    # split residual vector quantizer
    n_q: int = 32
    n_q_semantic: int = 1
    bins: int = 2048
    codebook_dim: int = 256
    codebooks: int = 8  # how many of the n_q codebooks are used

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", tuple(self.ratios))
        problems = []
        if self.sample_rate % self.hop:
            problems.append(f"sample_rate {self.sample_rate} is not a multiple of the hop {self.hop}")
        elif self.encoder_rate % self.frame_rate or self.encoder_rate <= self.frame_rate:
            problems.append(f"encoder rate {self.encoder_rate} Hz is not a multiple (>1) of {self.frame_rate} Hz")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            problems.append(f"d_model {self.d_model} must split into {self.num_heads} heads of even size")
        if not 1 <= self.n_q_semantic <= self.codebooks <= self.n_q or self.n_q_semantic == self.n_q:
            problems.append(f"need 1 <= n_q_semantic ({self.n_q_semantic}) <= codebooks ({self.codebooks}) "
                            f"<= n_q ({self.n_q}) and n_q > n_q_semantic")
        if problems:
            raise ConfigError("mimi: " + "; ".join(problems))

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)

    @property
    def encoder_rate(self) -> int:
        return self.sample_rate // self.hop

    @property
    def stride(self) -> int:
        """Transformer steps per frame (25 Hz -> 12.5 Hz)."""
        return int(self.encoder_rate // self.frame_rate)

    @property
    def frame_size(self) -> int:
        return self.hop * self.stride

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @classmethod
    def tiny(cls) -> MimiConfig:
        """A few hundred kB of weights, same frame (1920 samples) and 8 codebooks of 2048 entries.
        d_model != dimension and two residual layers exercise the projections and dilations."""
        return cls(
            dimension=12, n_filters=2, n_residual_layers=2, d_model=16, num_heads=2, num_layers=2,
            dim_feedforward=24, context=5, n_q=8, codebook_dim=4,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MimiConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"mimi: unknown key(s) {unknown}; known keys are {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_dir(cls, directory: str | Path) -> MimiConfig:
        """`mimi_config.json` if present (written only for non-official sizes), else the official Mimi."""
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ratios"] = list(self.ratios)
        return out


# ---------------------------------------------------------------------------------------------
# Transformer


def _put(buf: Tensor, index: tuple, new: Tensor, active: Tensor | None) -> None:
    """buf[index] = new, except for inactive batch rows (dim 0 of `new`), which keep their values."""
    if active is not None:
        new = torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, buf[index])
    buf[index] = new


@dataclass
class _Context:
    rows: Tensor | None  # [B] slot per batch row, None = rows 0..B-1
    active: Tensor | None  # [B] bool
    cos: Tensor  # [B, 1, T, head_dim / 2]
    sin: Tensor
    mask: Tensor  # [B, 1, T, C + T] (ring entries, then the new steps); [B, 1, T, T] without a cache
    write_rows: Tensor | None  # [B, n] slot of each of the last n new steps
    write_slots: Tensor | None  # [B, n] ring index of each


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


def _rope(x: Tensor, ctx: _Context) -> Tensor:
    """Rotate consecutive pairs (2i, 2i+1) as complex numbers, in fp32 (moshi's convention)."""
    xr, xi = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([xr * ctx.cos - xi * ctx.sin, xr * ctx.sin + xi * ctx.cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.out_projs = nn.ModuleList([nn.Linear(d, d, bias=False)])
        self.in_projs = nn.ModuleList([nn.Linear(d, 3 * d, bias=False)])  # q | k | v, head-major within each

    def forward(self, x: Tensor, keys: Tensor | None, values: Tensor | None, ctx: _Context) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.in_projs[0](x).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, T, hd] each
        q, k = _rope(q, ctx), _rope(k, ctx)
        scores = q @ k.transpose(-1, -2)
        if keys is not None:
            # Attend to the ring and the new steps separately: no copy of the cache per step.
            old_k = keys[:B] if ctx.rows is None else keys[ctx.rows]
            old_v = values[:B] if ctx.rows is None else values[ctx.rows]
            scores = torch.cat([q @ old_k.transpose(-1, -2), scores], dim=-1)
        assert scores.shape[-1] == ctx.mask.shape[-1], (scores.shape, ctx.mask.shape)
        p = (scores * q.shape[-1] ** -0.5).masked_fill(~ctx.mask, float("-inf")).softmax(-1)
        out = p[..., -T:] @ v
        if keys is not None:
            out = out + p[..., :-T] @ old_v
            n = ctx.write_slots.shape[1]
            index = (ctx.write_rows, slice(None), ctx.write_slots)
            _put(keys, index, k[:, :, -n:].transpose(1, 2), ctx.active)
            _put(values, index, v[:, :, -n:].transpose(1, 2), ctx.active)
        return self.out_projs[0](out.transpose(1, 2).reshape(B, T, D))


class Layer(nn.Module):
    def __init__(self, cfg: MimiConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = SelfAttention(d, cfg.num_heads)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d, bias=False)
        self.layer_scale_1 = LayerScale(d, cfg.layer_scale)
        self.layer_scale_2 = LayerScale(d, cfg.layer_scale)

    def forward(self, x: Tensor, keys: Tensor | None, values: Tensor | None, ctx: _Context) -> Tensor:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), keys, values, ctx))
        return x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)))))


class Transformer(nn.Module):
    """moshi's ProjectedTransformer in conv layout: [B, dimension, T] -> [B, dimension, T], causal, RoPE."""

    def __init__(self, cfg: MimiConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nest(layers=nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers)))
        self.projected = cfg.d_model != cfg.dimension
        if self.projected:
            self.input_proj = nn.Linear(cfg.dimension, cfg.d_model, bias=False)
            self.output_projs = nn.ModuleList([nn.Linear(cfg.d_model, cfg.dimension, bias=False)])

    def forward(
        self, x: Tensor, pos: Tensor, keys: Tensor | None = None, values: Tensor | None = None, *,
        rows: Tensor | None = None, active: Tensor | None = None, frame: int = 1,
    ) -> Tensor:
        """x: [B, dimension, T]; pos: [B] steps already in each row's cache. keys/values: the ring
        caches [layers, rows, heads, context, head_dim], or None (no past). A query at step p sees the
        keys at steps >= (p // frame + 1) * frame - context: a plain window for frame=1, moshi's
        streaming behaviour (frames written to the ring before attending) for frame=stride."""
        h = x.transpose(1, 2)
        if self.projected:
            h = self.input_proj(h)
        ctx = self._context(pos, h.shape[1], keys is not None, rows, active, frame)
        for i, layer in enumerate(self.transformer.layers):
            h = layer(h, None if keys is None else keys[i], None if values is None else values[i], ctx)
        if self.projected:
            h = self.output_projs[0](h)
        return h.transpose(1, 2)

    def _context(
        self, pos: Tensor, T: int, ring: bool, rows: Tensor | None, active: Tensor | None, frame: int,
    ) -> _Context:
        cfg, device = self.cfg, pos.device
        C = cfg.context
        qpos = pos[:, None] + torch.arange(T, device=device)  # [B, T]
        hd = cfg.head_dim
        ds = torch.arange(hd // 2, device=device, dtype=torch.float32)
        freqs = torch.exp(ds * (-math.log(cfg.max_period) * 2 / hd))
        angle = (qpos.float()[..., None] * freqs)[:, None]  # [B, 1, T, head_dim / 2]
        kpos = qpos
        write_rows = write_slots = None
        if ring:
            last = (pos - 1)[:, None]
            ring_pos = last - (last - torch.arange(C, device=device)) % C  # step held by each entry (<0: empty)
            kpos = torch.cat([ring_pos, qpos], dim=1)
            n = min(T, C)
            write_slots = qpos[:, -n:] % C
            write_rows = (rows if rows is not None else torch.arange(len(pos), device=device))[:, None].expand(-1, n)
        lo = (qpos // frame + 1) * frame - C  # [B, T]
        kp = kpos[:, None, :]
        mask = (kp >= 0) & (kp <= qpos[..., None]) & (kp >= lo[..., None])
        return _Context(rows, active, angle.cos(), angle.sin(), mask[:, None], write_rows, write_slots)


# ---------------------------------------------------------------------------------------------
# Quantizer


class Codebook(nn.Module):
    """moshi's EuclideanCodebook at inference: centroid i = embedding_sum[i] / cluster_usage[i]."""

    def __init__(self, bins: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(bins))
        self.register_buffer("embedding_sum", torch.zeros(bins, dim))

    def table(self) -> Tensor:
        return self.embedding_sum / self.cluster_usage.clamp(min=_EPS)[:, None]

    def lookup(self, codes: Tensor) -> Tensor:
        # Same division as table()[codes], done only for the rows we need.
        return F.embedding(codes, self.embedding_sum) / self.cluster_usage.clamp(min=_EPS)[codes][..., None]


class RVQ(nn.Module):
    """Residual VQ with 1x1 conv projections in and out of the codebook space."""

    def __init__(self, n: int, dim_in: int, dim: int, bins: int) -> None:
        super().__init__()
        self.input_proj = nn.Conv1d(dim_in, dim, 1, bias=False)
        self.output_proj = nn.Conv1d(dim, dim_in, 1, bias=False)
        self.vq = nest(layers=nn.ModuleList(nest(_codebook=Codebook(bins, dim)) for _ in range(n)))

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, K, T] -> [B, dim_in, T]."""
        q = self.vq.layers[0]._codebook.lookup(codes[:, 0])
        for k in range(1, codes.shape[1]):
            q = q + self.vq.layers[k]._codebook.lookup(codes[:, k])
        return self.output_proj(q.transpose(1, 2))

    def encode(self, x: Tensor, n: int) -> Tensor:
        """x [B, dim_in, T] -> codes [B, n, T], nearest centroid of each successive residual."""
        B, _, T = x.shape
        r = self.input_proj(x).transpose(1, 2).reshape(B * T, -1)
        codes = []
        for layer in self.vq.layers[:n]:
            table = layer._codebook.table()
            idx = torch.cdist(r[None], table[None])[0].argmin(-1)
            r = r - table[idx]
            codes.append(idx)
        return torch.stack(codes, dim=1).view(B, T, n).transpose(1, 2)


class SplitRVQ(nn.Module):
    """First (semantic) codebooks and the rest quantize the same latent with separate projections."""

    def __init__(self, cfg: MimiConfig) -> None:
        super().__init__()
        self.n_first = cfg.n_q_semantic
        self.rvq_first = RVQ(cfg.n_q_semantic, cfg.dimension, cfg.codebook_dim, cfg.bins)
        self.rvq_rest = RVQ(cfg.n_q - cfg.n_q_semantic, cfg.dimension, cfg.codebook_dim, cfg.bins)

    def decode(self, codes: Tensor) -> Tensor:
        q = self.rvq_first.decode(codes[:, : self.n_first])
        if codes.shape[1] > self.n_first:
            q = q + self.rvq_rest.decode(codes[:, self.n_first:])
        return q

    def encode(self, x: Tensor, n: int) -> Tensor:
        codes = self.rvq_first.encode(x, self.n_first)
        if n > self.n_first:
            codes = torch.cat([codes, self.rvq_rest.encode(x, n - self.n_first)], dim=1)
        return codes


# ---------------------------------------------------------------------------------------------
# State and model


@dataclass
class MimiDecoderState:
    """Per-row decoder state. `convs[0]` is the 12.5->25 Hz upsampler's tail [rows, dimension, stride],
    then one tensor per stateful SEANet decoder layer; `keys`/`values` are the transformer's ring
    caches [layers, rows, heads, context, head_dim]; `pos` [rows] counts 25 Hz steps decoded."""

    pos: Tensor
    keys: Tensor
    values: Tensor
    convs: list[Tensor]

    @classmethod
    def allocate(
        cls, cfg: MimiConfig, rows: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> MimiDecoderState:
        with torch.device("meta"):
            shapes = [(cfg.dimension, cfg.stride), *SEANetDecoder(**_seanet_kwargs(cfg)).state_shapes()]
        kv = (cfg.num_layers, rows, cfg.num_heads, cfg.context, cfg.head_dim)
        return cls(
            pos=torch.zeros(rows, dtype=torch.long, device=device),
            keys=torch.zeros(kv, device=device, dtype=dtype),
            values=torch.zeros(kv, device=device, dtype=dtype),
            convs=[torch.zeros(rows, c, t, device=device, dtype=dtype) for c, t in shapes],
        )

    @property
    def rows(self) -> int:
        return self.pos.shape[0]

    def reset_rows(self, rows: Tensor | list[int]) -> None:
        """Start the given rows afresh (silence history, empty cache)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.pos.device)
        self.pos[rows] = 0
        self.keys[:, rows] = 0
        self.values[:, rows] = 0
        for c in self.convs:
            c[rows] = 0


def _seanet_kwargs(cfg: MimiConfig) -> dict[str, Any]:
    names = ("dimension", "n_filters", "ratios", "kernel_size", "last_kernel_size", "residual_kernel_size",
             "n_residual_layers", "dilation_base", "compress")
    return {n: getattr(cfg, n) for n in names}


class Mimi(nn.Module):
    """The codec. Streaming decode (`step`), offline decode and encode. Submodule names are moshi's."""

    latency_samples = 0

    def __init__(self, cfg: MimiConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MimiConfig()
        self.cfg = cfg
        d, s = cfg.dimension, cfg.stride
        self.encoder = SEANetEncoder(**_seanet_kwargs(cfg))
        self.decoder = SEANetDecoder(**_seanet_kwargs(cfg))
        self.encoder_transformer = Transformer(cfg)
        self.decoder_transformer = Transformer(cfg)
        self.quantizer = SplitRVQ(cfg)
        self.downsample = nest(conv=CausalConv(d, d, 2 * s, s, bias=False))
        self.upsample = nest(convtr=CausalConvTranspose(d, d, 2 * s, s, groups=d, bias=False))  # per channel

    @property
    def frame_size(self) -> int:
        return self.cfg.frame_size

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @torch.no_grad()
    def step(
        self, codes: Tensor, state: MimiDecoderState, rows: Tensor | None = None, active: Tensor | None = None,
    ) -> Tensor:
        """codes: [B, codebooks] long in [0, bins). Decodes one frame per row: [B, frame_size] PCM.
        rows: [B] slots in `state` (None = 0..B-1). active: [B] bool; inactive rows compute but keep
        their state bit-identical."""
        if codes.dim() != 2 or codes.shape[1] != self.cfg.codebooks or codes.is_floating_point():
            raise MimiInputError(f"step expects integer codes [B, {self.cfg.codebooks}], got {codes.dtype} "
                                 f"{tuple(codes.shape)}; pass one frame per row, codes[:, :, t] of a [B, K, T] tensor")
        return self._decode(codes[..., None], state, rows, active)

    def flush(self, state: MimiDecoderState, rows: Tensor | None = None) -> Tensor:
        """Mimi holds nothing back: an empty [B, 0] tail (the LFM2.5 detokenizer has a real one)."""
        n = state.rows if rows is None else len(rows)
        return torch.zeros(n, 0, device=state.pos.device, dtype=state.keys.dtype)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes: [B, codebooks, T] -> [B, T * frame_size], equal to T calls of `step` from a fresh state."""
        if codes.dim() != 3 or codes.shape[1] != self.cfg.codebooks or codes.is_floating_point():
            raise MimiInputError(f"decode expects integer codes [B, {self.cfg.codebooks}, T], "
                                 f"got {codes.dtype} {tuple(codes.shape)}")
        w = self.decoder.model[0].conv.conv.weight
        if codes.shape[2] == 0:
            return torch.zeros(codes.shape[0], 0, device=w.device, dtype=w.dtype)
        state = MimiDecoderState.allocate(self.cfg, codes.shape[0], w.device, w.dtype)
        return torch.cat([self._decode(c, state, None, None) for c in codes.split(_DECODE_CHUNK, dim=2)], dim=1)

    def _decode(self, codes: Tensor, state: MimiDecoderState, rows: Tensor | None, active: Tensor | None) -> Tensor:
        B, _, T = codes.shape
        if rows is not None:
            assert rows.shape == (B,), (rows.shape, B)
        else:
            assert state.rows >= B, f"batch of {B} rows, state has {state.rows}"
        if active is not None:
            assert active.shape == (B,) and active.dtype == torch.bool, active
        sel = slice(0, B) if rows is None else rows
        z = self.quantizer.decode(codes)  # [B, dimension, T]
        prev = [c[sel] for c in state.convs]
        new: list[Tensor] = []
        z = self.upsample.convtr(z, iter(prev[:1]), new)  # [B, dimension, stride * T]
        pos = state.pos[sel]
        z = self.decoder_transformer(z, pos, state.keys, state.values, rows=rows, active=active, frame=self.cfg.stride)
        pcm, dec_new = self.decoder(z, prev[1:])
        for buf, x in zip(state.convs, new + dec_new, strict=True):
            _put(buf, (sel,), x, active)
        _put(state.pos, (sel,), pos + z.shape[-1], active)
        assert pcm.shape == (B, 1, T * self.frame_size), pcm.shape
        return pcm[:, 0]

    @torch.no_grad()
    def encode(self, wav: Tensor) -> Tensor:
        """wav: [B, 1, N] float at 24 kHz -> codes [B, codebooks, ceil(N / frame_size)] (offline; the
        end is zero-padded to whole frames, as moshi does)."""
        if wav.dim() != 3 or wav.shape[1] != 1 or not wav.is_floating_point():
            raise MimiInputError(f"encode expects float mono audio [B, 1, N] at {self.sample_rate} Hz, "
                                 f"got {wav.dtype} {tuple(wav.shape)}")
        return self.quantizer.encode(self._latent(wav), self.cfg.codebooks)

    def _latent(self, wav: Tensor) -> Tensor:
        """[B, 1, N] -> the unquantized 12.5 Hz latent [B, dimension, ceil(N / frame_size)]."""
        B, _, N = wav.shape
        wav = F.pad(wav, (0, -N % self.frame_size))
        z, _ = self.encoder(wav, self.encoder.initial_state(B, wav.device, wav.dtype))
        z = self.encoder_transformer(z, torch.zeros(B, dtype=torch.long, device=wav.device))
        down = self.downsample.conv
        first = z[..., :1].expand(-1, -1, down.history)  # moshi pads this conv by repeating the first step
        return down(z, iter([first]), [])


def random_state_dict(cfg: MimiConfig, seed: int = 0) -> dict[str, Tensor]:
    """Seeded random fp32 weights in moshi naming (for tests and `make-checkpoint`). Scaled so that
    activations stay O(1) and the decoder's output is audio of modest amplitude; codebook buffers are
    consistent (positive usage, `_initialized` = 1)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> Tensor:
        return torch.randn(shape, generator=g) * std

    with torch.device("meta"):
        model = Mimi(cfg)
    out: dict[str, Tensor] = {}
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, nn.Conv1d):
            fan = m.in_channels // m.groups * m.kernel_size[0]
            out[p + "weight"] = randn(*m.weight.shape, std=1.0 / math.sqrt(fan))
        elif isinstance(m, nn.ConvTranspose1d):
            fan = m.in_channels // m.groups * m.kernel_size[0] / m.stride[0]  # taps per output sample
            out[p + "weight"] = randn(*m.weight.shape, std=1.0 / math.sqrt(fan))
        elif isinstance(m, nn.Linear):
            out[p + "weight"] = randn(*m.weight.shape, std=1.0 / math.sqrt(m.in_features))
        elif isinstance(m, nn.LayerNorm):
            out[p + "weight"] = 1.0 + randn(*m.weight.shape, std=0.1)
            out[p + "bias"] = randn(*m.bias.shape, std=0.1)
        elif isinstance(m, LayerScale):
            out[p + "scale"] = cfg.layer_scale * (1.0 + randn(*m.scale.shape, std=0.1))
        elif isinstance(m, Codebook):
            usage = 0.5 + torch.rand(cfg.bins, generator=g)
            out[p + "_initialized"] = torch.ones(1)
            out[p + "cluster_usage"] = usage
            out[p + "embedding_sum"] = randn(cfg.bins, cfg.codebook_dim, std=cfg.codebooks**-0.5) * usage[:, None]
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and m.bias is not None:
            out[p + "bias"] = randn(*m.bias.shape, std=0.01)
    # The last conv makes the waveform: scale it so that random codes give speech-like levels (~0.1 RMS).
    out[f"decoder.model.{len(model.decoder.model) - 1}.conv.conv.weight"] *= 0.15
    names = list(model.state_dict())
    assert set(out) == set(names), sorted(set(out) ^ set(names))
    return {n: out[n] for n in names}
