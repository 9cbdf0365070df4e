"""Audio input path after the mel: FastConformer encoder and the MLP adapter (lfm2-audio-model.md 2.4, 2.5).

Offline (non-streaming) encoder: full bidirectional attention over one clip. Parameter and buffer
names equal the checkpoint's `conformer.*` / `audio_adapter.*` names without the prefix.

    enc = ConformerEncoder(cfg.encoder)          # mounted as `self.conformer`
    feats = enc.encode_clips([mel_a, mel_b])     # [T_a', d_model], [T_b', d_model]
    emb = AudioAdapter(512, 2048)(feats[0])      # mounted as `self.audio_adapter`

A padded batch gives each clip the same result as encoding it alone: padded time steps are zeroed
before every subsampling conv and before the depthwise conv, and masked out of attention.
Numerics follow the reference's eager path in the module dtype; the only fp32 island is the
relative-position table, built in fp32 and cast like the reference's `pe` buffer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import EncoderConfig

__all__ = [
    "AudioAdapter", "ConformerEncoder", "ConformerLayer", "EncoderInputError", "RelPosAttention", "Subsampling",
    "rel_pos_table",
]

MASK_SCORE = -10000.0  # NeMo's INF_VAL; a finite fill, not -inf


class EncoderInputError(ValueError):
    """Input the encoder cannot take (wrong mel shape)."""


def rel_pos_table(max_len: int, d_model: int, device: torch.device | str | None = None) -> Tensor:
    """Sinusoids for relative positions max_len-1 ... -(max_len-1): [2*max_len - 1, d_model] float32.

    Same formula and op order as NeMo's RelPositionalEncoding: the exp/log form of the frequencies
    matters once the table is cast to bf16.
    """
    pos = torch.arange(max_len - 1, -max_len, -1, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model))
    angle = pos * freq
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(1)  # sin at even, cos at odd columns


def _keep(lengths: Tensor, t: int, dtype: torch.dtype) -> Tensor:
    """[B, 1, T, 1]: 1 on the first lengths[b] time steps, else 0 (the reference multiplies by this mask)."""
    return (torch.arange(t, device=lengths.device) < lengths[:, None])[:, None, :, None].to(dtype)


class Subsampling(nn.Module):
    """dw_striding x8: Conv2d(1->C, 3, s2) + ReLU, then per extra stage a depthwise 3x3 s2 conv and a
    pointwise conv + ReLU, over the mel seen as a [T, F] image; then Linear(C * F', d_model).
    Indices in `conv` follow the checkpoint (0, 2, 3, 5, 6; the ReLUs sit at 1, 4, 7)."""

    def __init__(self, feat_in: int, d_model: int, channels: int, stages: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(stages - 1):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                       nn.Conv2d(channels, channels, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        freq = feat_in
        for _ in range(stages):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, T, feat_in], lengths: [B] -> [B, T', d_model], [B]."""
        x = x.unsqueeze(1) * _keep(lengths, x.shape[1], x.dtype)
        for layer in self.conv:
            if isinstance(layer, nn.ReLU):
                x = x.relu_()  # relu(0) = 0: padded steps stay zero. In place: the first map is large
                continue
            # Channels-last weights make oneDNN keep the activations NHWC instead of reordering the large
            # first-stage map: on CPU 34 -> 16 ms (fp32) and 37 -> 7 ms (bf16) for a 4 s clip. bf16 values
            # are unchanged; fp32 moves in the last bits (summation order).
            w = layer.weight.to(memory_format=torch.channels_last)
            x = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, groups=layer.groups)
            if layer.stride[0] == 2:
                lengths = (lengths - 1).div(2, rounding_mode="floor") + 1
            x = x.mul_(_keep(lengths, x.shape[2], x.dtype))  # also clears the pointwise bias on padded steps
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), lengths


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class RelPosAttention(nn.Module):
    """Transformer-XL attention: scores = ((q+u) k^T + shift((q+v) p^T)) / sqrt(d_k), p = linear_pos(table)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        assert d_model % n_heads == 0
        self.h, self.d_k = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """x: [B, T, D], pos: [2T-1, D] (positions T-1 ... 1-T), mask: [B, T, T] True = masked."""
        b, t, _ = x.shape
        assert pos.shape[0] == 2 * t - 1 and mask.shape == (b, t, t), (pos.shape, mask.shape)
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos).view(1, 2 * t - 1, self.h, self.d_k).transpose(1, 2)
        # The checkpoint stores the biases in fp32; the reference loads them into the model dtype.
        qu = (q + self.pos_bias_u.to(q.dtype)).transpose(1, 2)
        qv = (q + self.pos_bias_v.to(q.dtype)).transpose(1, 2)
        content = qu @ k.transpose(-2, -1)  # [B, H, T, T]
        rel = (qv @ p.transpose(-2, -1)).contiguous()  # [B, H, T, 2T-1], column j = relative position T-1-j
        # Shift so that [i, j] holds relative position i - j: element (i, j) sits at flat i*(2T-2) + T-1 + j.
        rel = rel.as_strided((b, self.h, t, t), (self.h * t * (2 * t - 1), t * (2 * t - 1), 2 * t - 2, 1),
                             rel.storage_offset() + t - 1)
        scores = (content + rel) / math.sqrt(self.d_k)
        mask = mask.unsqueeze(1)
        attn = torch.softmax(scores.masked_fill(mask, MASK_SCORE), dim=-1).masked_fill(mask, 0.0)
        out = (attn @ v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (symmetric, non-causal), BatchNorm (eval), SiLU, pointwise conv."""

    def __init__(self, d_model: int, kernel: int) -> None:
        super().__init__()
        assert kernel % 2 == 1
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.batch_norm = nn.BatchNorm1d(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """x: [B, T, D], pad: [B, T] True on padded steps."""
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        x = self.depthwise_conv(x.masked_fill(pad.unsqueeze(1), 0.0))
        bn = self.batch_norm  # always running statistics: this module is inference-only
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.pointwise_conv2(F.silu(x)).transpose(1, 2)


class ConformerLayer(nn.Module):
    """Macaron block: x + FF/2, + attention, + conv, + FF/2, then LayerNorm (all pre-norm, eps 1e-5)."""

    def __init__(self, d_model: int, d_ff: int, n_heads: int, kernel: int) -> None:
        super().__init__()
        # Registration order follows the checkpoint.
        self.norm_feed_forward1 = nn.LayerNorm(d_model)
        self.feed_forward1 = FeedForward(d_model, d_ff)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConvModule(d_model, kernel)
        self.norm_self_att = nn.LayerNorm(d_model)
        self.self_attn = RelPosAttention(d_model, n_heads)
        self.norm_feed_forward2 = nn.LayerNorm(d_model)
        self.feed_forward2 = FeedForward(d_model, d_ff)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, pos: Tensor, att_mask: Tensor, pad: Tensor) -> Tensor:
        x = x + self.feed_forward1(self.norm_feed_forward1(x)) * 0.5
        x = x + self.self_attn(self.norm_self_att(x), pos, att_mask)
        x = x + self.conv(self.norm_conv(x), pad)
        x = x + self.feed_forward2(self.norm_feed_forward2(x)) * 0.5
        return self.norm_out(x)


class ConformerEncoder(nn.Module):
    """FastConformer, offline. forward(mel [B, feat_in, T], lengths [B]) -> ([B, d_model, T'], [B])."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        assert cfg.subsampling == "dw_striding" and cfg.self_attention_model == "rel_pos" and not cfg.xscaling, cfg
        assert cfg.untie_biases and cfg.conv_norm_type == "batch_norm" and cfg.feat_out <= 0, cfg
        self.cfg = cfg
        self.pre_encode = Subsampling(cfg.feat_in, cfg.d_model, cfg.subsampling_conv_channels, cfg.subsampling_stages)
        d_ff = cfg.d_model * cfg.ff_expansion_factor
        self.layers = nn.ModuleList(
            ConformerLayer(cfg.d_model, d_ff, cfg.n_heads, cfg.conv_kernel_size) for _ in range(cfg.n_layers)
        )
        self._pe: dict[torch.device, Tensor] = {}  # fp32 tables per device; computed, never in the state dict

    def positions(self, t: int, device: torch.device) -> Tensor:
        """Relative-position sinusoids for T' = t frames, [2t - 1, d_model] float32."""
        table = self._pe.get(device)
        if table is None or table.shape[0] < 2 * t - 1:
            # Full reference-sized table first so that values are those of the reference's buffer.
            table = rel_pos_table(max(self.cfg.pos_emb_max_len, t), self.cfg.d_model, device)
            self._pe[device] = table
        center = table.shape[0] // 2  # row of relative position 0
        return table[center - t + 1 : center + t]

    def forward(self, mel: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        b, feat, _ = mel.shape
        assert feat == self.cfg.feat_in and lengths.shape == (b,), (mel.shape, lengths.shape)
        dtype = self.pre_encode.out.weight.dtype
        assert mel.dtype == dtype, f"mel is {mel.dtype}, the encoder runs in {dtype}: cast it first"
        x, lengths = self.pre_encode(mel.transpose(1, 2), lengths.to(mel.device))
        t = x.shape[1]
        valid = torch.arange(t, device=x.device) < lengths[:, None]  # [B, T']
        att_mask = ~(valid[:, :, None] & valid[:, None, :])  # padded query or key
        pad = ~valid
        pos = self.positions(t, x.device).to(dtype)
        for layer in self.layers:
            x = layer(x, pos, att_mask, pad)
        return x.transpose(1, 2), lengths.long()

    @torch.no_grad()
    def encode_clips(self, mels: list[Tensor]) -> list[Tensor]:
        """Encode clips of different lengths in one zero-padded batch; each clip's valid frames, [T_i', d_model]."""
        if not mels:
            return []
        for m in mels:
            if m.dim() != 2 or m.shape[0] != self.cfg.feat_in or m.shape[1] == 0:
                raise EncoderInputError(f"each mel must be [{self.cfg.feat_in}, T > 0] (log_mel's output), "
                                        f"got {tuple(m.shape)}")
        w = self.pre_encode.out.weight  # the batch goes to the encoder's device and dtype
        lengths = [m.shape[1] for m in mels]
        batch = torch.zeros(len(mels), self.cfg.feat_in, max(lengths), dtype=w.dtype, device=w.device)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = m
        out, out_lengths = self(batch, torch.tensor(lengths, device=w.device))
        return [out[i, :, :n].transpose(0, 1).contiguous() for i, n in enumerate(out_lengths.tolist())]


class AudioAdapter(nn.Module):
    """LayerNorm -> Linear -> GELU (exact erf) -> Linear; names model.0, model.1, model.3 as in the checkpoint."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
