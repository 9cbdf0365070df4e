"""Weight-only quantization of the decode path's linear layers, for CPU serving (`--weights int8|int4`).

A one-session decode step on a CPU multiplies one activation row by every weight matrix: it is bound by
how fast the weights stream from memory and by the matrix-vector kernel. torch's own packed-weight
kernels do that at close to the streaming-read bandwidth with bf16 activations (docs/bench/speed.md has
the comparison with the dense kernels and torchao, which calls these same ops on CPU):

    int8: per-output-channel symmetric scales, w = q * s               (aten._weight_int8pack_mm)
    int4: groups of GROUP_SIZE along the input, w = (q - 8) * s + z     (aten._weight_int4pack_mm_for_cpu)

What is quantized: every nn.Linear of the backbone and the depthformer, depth_linear, the depthformer's
per-codebook logits heads, and the tied text head (a quantized copy; the embedding lookup keeps the
dense table). The audio encoder and the speech decoders stay dense: they run once per clip or outside
the model's step. Activations stay bf16, which both kernels need for their fast paths. The error
against bf16 is measured by `python -m bench.quant_error` and written down in docs/bench/speed.md.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.defaults import WEIGHTS

__all__ = ["GROUP_SIZE", "WEIGHTS", "Int4Linear", "Int8Linear", "check_weights", "quantize_model"]

GROUP_SIZE = 128  # int4 group along the input dimension: the fastest of 32/64/128 here, and the usual size
_INNER_K_TILES = 2  # the int4 packing's inner tiling (the CPU kernel accepts 1, 2, 4, 8)


def check_weights(weights: str, dtype: torch.dtype, device: torch.device | str) -> None:
    """A clear error for a combination the packed kernels do not serve."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "dense":
        return
    if torch.device(device).type != "cpu":
        raise ValueError(f"--weights {weights} is a CPU option (torch's packed CPU kernels); on "
                         f"{torch.device(device).type} use --weights dense with bfloat16")
    if dtype != torch.bfloat16:
        raise ValueError(f"--weights {weights} runs with bfloat16 activations (the kernels' fast path), not {dtype}")


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T (+ bias); q int8 [out, in], scale [out] in the activations' dtype."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).contiguous(), self.qweight, self.scale)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> Tensor:
        return self.qweight.float() * self.scale.float()[:, None]


class Int4Linear(nn.Module):
    """Asymmetric int4 in groups of GROUP_SIZE input channels: w = (q - 8) * s + z, q in 0..15."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        out_f, in_f = weight.shape
        if not supports_int4(weight.shape, group_size):
            raise ValueError(f"int4 needs in_features % {group_size} == 0 and out_features % 8 == 0, "
                             f"got {tuple(weight.shape)}")
        w = weight.detach().float().view(out_f, in_f // group_size, group_size)
        lo, hi = w.amin(-1), w.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
        q = ((w - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).view(out_f, in_f)
        zero = lo + 8 * scale  # so that (q - 8) * scale + zero = lo + q * scale
        scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [groups, out, 2]
        self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, _INNER_K_TILES))
        self.register_buffer("scales_zeros", scales_zeros.to(weight.dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features, self.group_size = in_f, out_f, group_size

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features).contiguous(), self.qweight, self.group_size, self.scales_zeros)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def supports_int4(shape: torch.Size | tuple[int, int], group_size: int = GROUP_SIZE) -> bool:
    return shape[1] % group_size == 0 and shape[0] % 8 == 0


def _quantized(weight: Tensor, bias: Tensor | None, weights: str) -> nn.Module:
    if weights == "int4" and supports_int4(weight.shape):
        return Int4Linear(weight, bias)
    # int8 for what int4's packing cannot hold (the 2049-row codebook heads)
    return Int8Linear(weight, bias)


@torch.no_grad()
def quantize_model(model: nn.Module, weights: str) -> nn.Module:
    """Replace, in place, the decode path's linear layers of an LFM2AudioModel; returns the model.
    The dense weights of replaced layers are freed (the tied text table stays for embedding lookups)."""
    check_weights(weights, model.dtype, model.device)
    if weights == "dense":
        return model
    decode_path = [model.lfm.layers, model.depthformer, model.depth_embeddings]
    for root in decode_path:
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, _quantized(child.weight, child.bias, weights))
    model.depth_linear = _quantized(model.depth_linear.weight, model.depth_linear.bias, weights)
    model.text_head = _quantized(model.lfm.embed_tokens.weight, None, weights)
    model.weights = weights
    return model
