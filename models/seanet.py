"""SEANet: Mimi's causal convolutional encoder and decoder, with explicit streaming state.

Every convolution is causal: a Conv1d sees `history = effective_kernel - stride` past input samples
(zeros at the start of a stream), a ConvTranspose1d keeps the `kernel - stride` output samples that
spill past the current chunk and adds them to the start of the next one. So feeding a signal in
chunks gives the same output as one pass, and nothing is held back (no lookahead).

The layers are functional about state: `forward(x, prev, new)` reads one tensor per stateful layer
from the iterator `prev` (in module order) and appends that layer's next state to `new`. The caller
owns the tensors and decides which rows to write back.

Module nesting mirrors moshi's so that tensor names match the official checkpoint
(`model.0.conv.conv.weight`, `model.2.convtr.convtr.weight`, `model.3.block.1.conv.conv.weight`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalConv", "CausalConvTranspose", "ResBlock", "SEANetDecoder", "SEANetEncoder", "nest"]


def nest(**children: nn.Module) -> nn.Module:
    """A bare container: it exists only so that parameter names match the moshi checkpoint,
    where each convolution sits two modules deep (StreamingConv1d -> NormConv1d -> Conv1d)."""
    box = nn.Module()
    for name, child in children.items():
        box.add_module(name, child)
    return box


class CausalConv(nn.Module):
    """Conv1d over [B, C, T] whose output step t covers inputs up to the end of its own stride window."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1, bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nest(conv=nn.Conv1d(cin, cout, kernel, stride, dilation=dilation, groups=groups, bias=bias))
        self.stride = stride
        self.history = (kernel - 1) * dilation + 1 - stride
        assert self.history >= 0, "stride larger than the kernel is not supported"

    @property
    def state_shape(self) -> tuple[int, int]:
        return (self.conv.conv.in_channels, self.history)

    def forward(self, x: Tensor, prev: Iterator[Tensor], new: list[Tensor]) -> Tensor:
        assert x.shape[-1] % self.stride == 0, f"chunk of {x.shape[-1]} steps is not a multiple of {self.stride}"
        if self.history:
            p = next(prev)
            assert p.shape[1:] == self.state_shape, (p.shape, self.state_shape)
            x = torch.cat([p, x], dim=-1)
            new.append(x[..., x.shape[-1] - self.history:])
        return self.conv.conv(x)


class CausalConvTranspose(nn.Module):
    """ConvTranspose1d whose overlapping tail (kernel - stride samples) is carried into the next chunk."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.convtr = nest(convtr=nn.ConvTranspose1d(cin, cout, kernel, stride, groups=groups, bias=bias))
        self.stride = stride
        self.history = kernel - stride
        assert self.history >= 0

    @property
    def state_shape(self) -> tuple[int, int]:
        return (self.convtr.convtr.out_channels, self.history)

    def forward(self, x: Tensor, prev: Iterator[Tensor], new: list[Tensor]) -> Tensor:
        m = self.convtr.convtr
        h = self.history
        if m.groups == 1 and h == self.stride:
            y = self._overlap_add(x, m.weight)
        else:
            y = F.conv_transpose1d(x, m.weight, None, self.stride, groups=m.groups)  # [B, C, T*stride + history]
        if h:
            assert h <= x.shape[-1] * self.stride, "chunk shorter than the transposed conv's overlap"
            p = next(prev)
            assert p.shape[1:] == self.state_shape, (p.shape, self.state_shape)
            new.append(y[..., -h:])
            y = y[..., :-h].clone()
            y[..., :h] += p
        if m.bias is not None:
            y = y + m.bias[:, None]
        return y

    def _overlap_add(self, x: Tensor, w: Tensor) -> Tensor:
        """conv_transpose1d for kernel = 2 * stride as one matmul: on CPU, PyTorch's transposed conv is
        3-4x slower when a few input steps meet a large weight (the decoder's first upsampling layer)."""
        B, C, T = x.shape
        S = self.stride
        cols = (x.transpose(1, 2).reshape(B * T, C) @ w.reshape(C, -1)).view(B, T, -1, 2, S)  # [B, T, Cout, 2, S]
        # Output block t (S samples) = first kernel half of input t + second kernel half of input t-1.
        y = F.pad(cols[:, :, :, 0], (0, 0, 0, 0, 0, 1)) + F.pad(cols[:, :, :, 1], (0, 0, 0, 0, 1, 0))
        return y.permute(0, 2, 1, 3).reshape(B, -1, (T + 1) * S)


def _run(layers: nn.ModuleList, x: Tensor, prev: Iterator[Tensor], new: list[Tensor]) -> Tensor:
    for layer in layers:
        x = F.elu(x) if isinstance(layer, nn.ELU) else layer(x, prev, new)
    return x


class ResBlock(nn.Module):
    """x + conv1x1(elu(conv_k(elu(x)))), the inner width reduced by `compress`."""

    def __init__(self, dim: int, kernel: int, dilation: int, compress: int) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList([
            nn.ELU(), CausalConv(dim, hidden, kernel, dilation=dilation), nn.ELU(), CausalConv(hidden, dim, 1),
        ])

    def forward(self, x: Tensor, prev: Iterator[Tensor], new: list[Tensor]) -> Tensor:
        return x + _run(self.block, x, prev, new)


class _SEANet(nn.Module):
    model: nn.ModuleList

    def forward(self, x: Tensor, prev: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """x: [B, C, T]. prev: one tensor per stateful layer (see `state_shapes`). Returns the output
        and the next states, in the same order."""
        it = iter(prev)
        new: list[Tensor] = []
        y = _run(self.model, x, it, new)
        assert next(it, None) is None, "more state tensors than stateful layers"
        return y, new

    def state_shapes(self) -> list[tuple[int, int]]:
        """(channels, steps) of each stateful layer's state, in the order `forward` reads them."""
        return [m.state_shape for m in self.modules() if isinstance(m, (CausalConv, CausalConvTranspose)) and m.history]

    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype) -> list[Tensor]:
        return [torch.zeros(batch, c, t, device=device, dtype=dtype) for c, t in self.state_shapes()]


class SEANetEncoder(_SEANet):
    """Waveform [B, 1, N] -> latent [B, dimension, N / hop]. Strides are `ratios` in reverse."""

    def __init__(
        self, *, dimension: int, n_filters: int, ratios: tuple[int, ...], kernel_size: int, last_kernel_size: int,
        residual_kernel_size: int, n_residual_layers: int, dilation_base: int, compress: int,
    ) -> None:
        super().__init__()
        self.hop = math.prod(ratios)
        mult = 1
        layers: list[nn.Module] = [CausalConv(1, n_filters, kernel_size)]
        for ratio in reversed(ratios):
            width = mult * n_filters
            layers += [ResBlock(width, residual_kernel_size, dilation_base**j, compress)
                       for j in range(n_residual_layers)]
            layers += [nn.ELU(), CausalConv(width, 2 * width, 2 * ratio, stride=ratio)]
            mult *= 2
        layers += [nn.ELU(), CausalConv(mult * n_filters, dimension, last_kernel_size)]
        self.model = nn.ModuleList(layers)


class SEANetDecoder(_SEANet):
    """Latent [B, dimension, T] -> waveform [B, 1, T * hop]."""

    def __init__(
        self, *, dimension: int, n_filters: int, ratios: tuple[int, ...], kernel_size: int, last_kernel_size: int,
        residual_kernel_size: int, n_residual_layers: int, dilation_base: int, compress: int,
    ) -> None:
        super().__init__()
        self.hop = math.prod(ratios)
        mult = 2 ** len(ratios)
        layers: list[nn.Module] = [CausalConv(dimension, mult * n_filters, kernel_size)]
        for ratio in ratios:
            width = mult * n_filters // 2
            layers += [nn.ELU(), CausalConvTranspose(2 * width, width, 2 * ratio, ratio)]
            layers += [ResBlock(width, residual_kernel_size, dilation_base**j, compress)
                       for j in range(n_residual_layers)]
            mult //= 2
        layers += [nn.ELU(), CausalConv(n_filters, 1, last_kernel_size)]
        self.model = nn.ModuleList(layers)
