"""LFM2.5 audio detokenizer: 8 Mimi-style codes per 80 ms frame -> 1920 samples at 24 kHz.

Pipeline (lfm2-audio-model.md section 2.8b): mean of 8 offset code embeddings, each frame repeated 6
times (75 Hz), an LFM2 backbone whose attention sees a causal window of 30 positions, `lin` to 641
log-magnitudes + 641 phases, and an ISTFT with "same" padding (n_fft 1280, hop 320, periodic Hann).

Every stage is causal, so it streams with explicit per-row state:

    state = DetokenizerState.allocate(cfg, rows=S)
    pcm = det.step(codes[B, 8], state, rows=slots)   # [B, 1920] per code frame
    tail = det.flush(state, rows=slots)              # [B, 480] at the end of a stream

The streaming ISTFT can only emit samples whose overlap-add is complete, so the stream lags the
offline `decode` by `latency_samples` = 480: a row's first frame starts with 480 zeros, and
`cat(steps)[..., 480:] ++ flush()` equals `decode(codes)`.
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

from models.config import ConfigError, LFM2Config
from models.lfm2 import LFM2, BackboneState

__all__ = [
    "Detokenizer",
    "DetokenizerInputError",
    "DetokenizerState",
    "config_dict",
    "full_config",
    "load_config",
    "random_state_dict",
    "tiny_config",
]

CODEBOOKS = 8
CODES = 2048  # per codebook; end-of-audio (2048) has no embedding
UPSAMPLE = 6  # backbone positions (= STFT frames) per code frame
N_FFT = 1280
HOP = 320
BINS = N_FFT // 2 + 1  # 641
OUT = 2 * BINS  # 1282: log-magnitude then phase
TRIM = (N_FFT - HOP) // 2  # 480, the "same" padding cut at each end
SAMPLES = UPSAMPLE * HOP  # 1920 per code frame
QUARTERS = N_FFT // HOP  # 4 frames overlap at every sample
WINDOW = 30  # default causal attention window (positions)

_WHERE = "audio_detokenizer/config.json"


class DetokenizerInputError(ValueError):
    """Codes of the wrong shape or type, or outside [0, 2048) (end-of-audio frames must be dropped)."""


def _windowed(cfg: LFM2Config) -> LFM2Config:
    """The reference masks every attention layer with the window, whatever the layer type says."""
    if not cfg.attention_layers:
        raise ConfigError(f"{_WHERE}: the detokenizer backbone needs at least one attention layer")
    types = tuple(t if t == "conv" else "sliding_attention" for t in cfg.layer_types)
    window = WINDOW if cfg.sliding_window is None else cfg.sliding_window
    return dataclasses.replace(cfg, layer_types=types, sliding_window=window)


def load_config(source: dict[str, Any] | str | Path) -> LFM2Config:
    """Parse `audio_detokenizer/config.json` (HF Lfm2Config keys plus `sliding_window`, `output_size`):
    the parsed dict, the file, or the `audio_detokenizer/` directory."""
    if not isinstance(source, dict):
        path = Path(source)
        path = path / "config.json" if path.is_dir() else path
        try:
            return load_config(json.loads(path.read_text()))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    cfg = _windowed(LFM2Config.from_dict(source, where=_WHERE))
    if cfg.extra.get("output_size", OUT) != OUT:
        raise ConfigError(f"{_WHERE}: output_size must be {OUT} (n_fft {N_FFT}), got {cfg.extra['output_size']}")
    if cfg.hidden_size % cfg.num_attention_heads or cfg.head_dim % 2:
        raise ConfigError(f"{_WHERE}: hidden_size must split into an even head_dim, got {cfg}")
    return cfg


def full_config() -> LFM2Config:
    """The official LFM2.5-Audio-1.5B detokenizer (ff 3328 -> 2304 after the auto-adjust)."""
    return load_config({
        "architectures": ["Lfm25AudioTokenizer"], "model_type": "lfm2", "output_size": OUT,
        "vocab_size": 65536, "hidden_size": 512, "intermediate_size": 3328, "num_hidden_layers": 8,
        "num_attention_heads": 16, "num_key_value_heads": 8, "norm_eps": 1e-5, "rope_theta": 1_000_000.0,
        "sliding_window": WINDOW,
        "layer_types": ["conv", "conv", "sliding_attention", "conv", "sliding_attention", "conv",
                        "sliding_attention", "conv"],
    })


def tiny_config() -> LFM2Config:
    """A small detokenizer for tests and smoke checkpoints (same window, two attention layers)."""
    return load_config({
        "architectures": ["Lfm25AudioTokenizer"], "model_type": "lfm2", "output_size": OUT,
        "vocab_size": 16, "hidden_size": 64, "intermediate_size": 96, "block_auto_adjust_ff_dim": False,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "norm_eps": 1e-5,
        "rope_theta": 1_000_000.0, "sliding_window": WINDOW,
        "layer_types": ["conv", "sliding_attention", "conv", "sliding_attention"],
    })


def config_dict(cfg: LFM2Config) -> dict[str, Any]:
    """The `audio_detokenizer/config.json` to write: keys that both `load_config` and the reference's
    `Lfm2Config.from_pretrained` accept, attention layers written as "sliding_attention"."""
    out = _windowed(cfg).to_dict()
    out.update(architectures=["Lfm25AudioTokenizer"], model_type="lfm2", output_size=OUT)
    return out


class CodeEmbedding(nn.Module):
    """One table for all codebooks (codebook k at rows 2048k..), averaged over the 8 codebooks."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(CODEBOOKS * CODES, dim)

    def forward(self, codes: Tensor) -> Tensor:
        """codes [B, 8, T] -> [B, T, dim]. (No offsets buffer: it would not survive a meta-device load.)"""
        offsets = torch.arange(CODEBOOKS, device=codes.device) * CODES
        return self.emb(codes + offsets[:, None]).mean(1)


class ISTFT(nn.Module):
    """Holds the synthesis window (`istft.window`, a checkpoint tensor); the arithmetic is below."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True))

    def frames(self, spec: Tensor) -> Tensor:
        """spec [B, N, 1282] (log-magnitude, phase) -> windowed time frames [B, N, 1280], fp32."""
        spec = spec.float()
        z = torch.polar(spec[..., :BINS].exp(), spec[..., BINS:])
        return torch.fft.irfft(z, n=N_FFT, dim=-1) * self.window.float()

    def envelope(self, n: int = UPSAMPLE) -> Tensor:
        """The overlap-added squared window of n frames, in hop blocks [n + 3, HOP]. For the stream
        (n = 6): blocks 0..5 divide a row's first code frame, block 3 (all four quarters) every later
        block, blocks 6..8 the flushed tail, with the same summation order as `decode`."""
        w2 = self.window.float().square().expand(1, n, N_FFT)
        return _overlap_add(w2, w2.new_zeros(1, QUARTERS - 1, HOP))[0]


def _overlap_add(frames: Tensor, tail: Tensor) -> Tensor:
    """frames [B, N, 1280] at hop 320, on top of `tail` [B, 3, 320] (partial sums left by earlier
    frames). Returns [B, N + 3, 320]: N complete hop blocks, then the new tail. Oldest frame first."""
    B, N, _ = frames.shape
    q = frames.view(B, N, QUARTERS, HOP)
    y = F.pad(tail, (0, 0, 0, N))
    for k in reversed(range(QUARTERS)):  # quarter k of frame t lands in block t + k
        y[:, k : k + N] += q[:, :, k]
    return y


@dataclass
class DetokenizerState:
    """Per-row streaming state: the backbone's conv states and ring KV cache, `pos` [rows] (backbone
    positions = STFT frames decoded so far), `tail` [rows, 3, 320] (fp32 overlap-add partial sums)."""

    backbone: BackboneState
    pos: Tensor
    tail: Tensor

    @classmethod
    def allocate(
        cls, cfg: LFM2Config, rows: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> DetokenizerState:
        cfg = _windowed(cfg)
        backbone = BackboneState.allocate(cfg, rows, cfg.sliding_window + UPSAMPLE - 1, device=device, dtype=dtype)
        pos = torch.zeros(rows, dtype=torch.long, device=device)
        tail = torch.zeros(rows, QUARTERS - 1, HOP, device=device)
        return cls(backbone, pos, tail)

    @property
    def rows(self) -> int:
        return self.pos.shape[0]

    def reset_rows(self, rows: Tensor | list[int]) -> None:
        """Start the given rows afresh (a new audio stream)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.pos.device)
        self.backbone.reset_rows(rows)
        self.pos[rows] = 0
        self.tail[rows] = 0


class Detokenizer(nn.Module):
    """Names match `audio_detokenizer/model.safetensors`: emb.emb, lfm.*, lin, istft.window."""

    latency_samples = TRIM  # the stream lags `decode` by this many samples
    frame_size = SAMPLES
    sample_rate = 24_000

    def __init__(self, cfg: LFM2Config) -> None:
        super().__init__()
        self.cfg = cfg = _windowed(cfg)
        self.emb = CodeEmbedding(cfg.hidden_size)
        self.lfm = LFM2(cfg)
        self.lin = nn.Linear(cfg.hidden_size, OUT)
        self.istft = ISTFT()

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Offline: codes [B, 8, T] -> waveform [B, T * 1920], as the reference's forward."""
        if codes.dim() != 3 or codes.shape[1] != CODEBOOKS or codes.is_floating_point():
            raise DetokenizerInputError(f"decode expects integer codes [B, {CODEBOOKS}, T], got {codes.dtype} "
                                        f"{tuple(codes.shape)}")
        B, _, T = codes.shape
        if T == 0:
            return torch.zeros(B, 0, device=codes.device)
        if codes.min() < 0 or codes.max() >= CODES:
            raise DetokenizerInputError(f"codes must be in [0, {CODES}); drop end-of-audio frames ({CODES}) "
                                        "before decoding")
        x = self.emb(codes).repeat_interleave(UPSAMPLE, dim=1)  # "nearest-exact" x6 == repeat
        N = x.shape[1]
        state = BackboneState.allocate(self.cfg, B, N + self.cfg.sliding_window - 1, device=x.device, dtype=x.dtype)
        h = self.lfm(x, state, torch.zeros(B, dtype=torch.long, device=x.device))
        frames = self.istft.frames(self.lin(h))
        y = _overlap_add(frames, frames.new_zeros(B, QUARTERS - 1, HOP)).flatten(1)
        return (y / self.istft.envelope(N).flatten())[:, TRIM:-TRIM]

    @torch.no_grad()
    def step(self, codes: Tensor, state: DetokenizerState, rows: Tensor | None = None,
             active: Tensor | None = None) -> Tensor:
        """One code frame per row: codes [B, 8] (in [0, 2048), unchecked: no host sync here) ->
        [B, 1920]. rows: [B] slot per batch row (None = 0..B-1); active: [B] bool, inactive rows
        compute but write no state."""
        if codes.dim() != 2 or codes.shape[1] != CODEBOOKS or codes.is_floating_point():
            raise DetokenizerInputError(f"step expects integer codes [B, {CODEBOOKS}], got {codes.dtype} "
                                        f"{tuple(codes.shape)}; pass one frame per row, codes[:, :, t]")
        B = codes.shape[0]
        assert rows is None or rows.shape == (B,)
        assert active is None or active.shape == (B,)
        idx = torch.arange(B, device=codes.device) if rows is None else rows
        pos = state.pos[idx]
        x = self.emb(codes[:, :, None]).expand(B, UPSAMPLE, -1)
        h = self.lfm(x, state.backbone, pos, rows=rows, active=active)
        frames = self.istft.frames(self.lin(h))  # [B, 6, 1280]
        y = _overlap_add(frames, state.tail[idx])  # [B, 9, 320]
        env = self.istft.envelope()
        first = (pos == 0)[:, None]
        out = y[:, :UPSAMPLE].flatten(1) / torch.where(first, env[:UPSAMPLE].flatten(), env[3].repeat(UPSAMPLE))
        # A row's first TRIM samples are the "same" padding that offline cuts: emit silence instead.
        out = out.masked_fill(first & (torch.arange(SAMPLES, device=out.device) < TRIM), 0.0)
        tail, pos = y[:, UPSAMPLE:], pos + UPSAMPLE
        if active is not None:
            tail = torch.where(active[:, None, None], tail, state.tail[idx])
            pos = torch.where(active, pos, state.pos[idx])
        state.tail[idx] = tail
        state.pos[idx] = pos
        return out

    @torch.no_grad()
    def flush(self, state: DetokenizerState, rows: Tensor | None = None) -> Tensor:
        """The last 480 samples of each row's stream, [B, 480]. Changes no state: call
        `state.reset_rows` before the row's next stream."""
        tail = state.tail if rows is None else state.tail[rows]
        env = self.istft.envelope()[UPSAMPLE:].flatten()[:TRIM]
        return tail.flatten(1)[:, :TRIM] / env


def random_state_dict(cfg: LFM2Config, seed: int = 0) -> dict[str, Tensor]:
    """Seeded random fp32 weights under the official names. Scaled so that the spectrum stays
    modest (log-magnitude around 1, random phases): the waveform is finite, |y| well below 1."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Detokenizer(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g)

    out: dict[str, Tensor] = {}
    for name, shape in shapes.items():
        if name == "istft.window":
            w = torch.hann_window(N_FFT, periodic=True)
        elif name.endswith("norm.weight"):
            w = 1.0 + 0.1 * randn(*shape)
        elif name == "lin.weight":  # phases get a wide spread, log-magnitudes a narrow one
            w = randn(*shape) / math.sqrt(shape[1])
            w[:BINS] *= 0.5
            w[BINS:] *= math.pi
        elif name == "lin.bias":
            w = torch.cat([1.0 + 0.1 * randn(BINS), math.pi * (2 * torch.rand(BINS, generator=g) - 1)])
        elif name in ("emb.emb.weight", "lfm.embed_tokens.weight"):
            w = randn(*shape)
        else:  # Linear [out, in] and depthwise conv [D, 1, 3]: unit-variance outputs
            w = randn(*shape) / math.sqrt(shape[-1])
        assert w.shape == shape, name
        out[name] = w.float().contiguous()
    return out
