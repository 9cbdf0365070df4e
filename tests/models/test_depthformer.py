"""The depthformer's stacked w1/w3 (FusedSwiGLU): bit-identical for one session, within rounding for a
batch, applied at load for bf16 only."""

import copy

import pytest
import torch

from models.depthformer import FusedSwiGLU
from models.lfm2 import SwiGLU


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_swiglu_matches(dtype):
    ffn = SwiGLU(64, 176).to(dtype)
    fused = FusedSwiGLU(ffn)
    one, batch = torch.randn(1, 64, dtype=dtype), torch.randn(3, 5, 64, dtype=dtype)
    with torch.inference_mode():
        assert torch.equal(fused(one), ffn(one))  # a matrix-vector product: each output the same dot product
        # a batched product may block the 64-term sums differently: a few units of the last place
        rtol = 2 ** -7 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(fused(batch), ffn(batch), rtol=rtol, atol=rtol * ffn(batch).abs().max().item())


def test_fused_at_load_for_bf16_only(tiny_dir, tiny):
    from models.checkpoint import load_checkpoint

    assert not any(isinstance(layer.feed_forward, FusedSwiGLU) for layer in tiny.model.depthformer.layers)
    bf16 = load_checkpoint(tiny_dir, dtype=torch.bfloat16)
    assert all(isinstance(layer.feed_forward, FusedSwiGLU) for layer in bf16.model.depthformer.layers)
    m = bf16.model
    unfused = copy.deepcopy(tiny.model.depthformer).to(torch.bfloat16)
    z = torch.randn(1, m.cfg.codebooks, m.cfg.depthformer.dim, dtype=torch.bfloat16)
    pick = lambda i, logits: logits.argmax(-1)  # noqa: E731
    with torch.inference_mode():
        assert torch.equal(m.depthformer.frame(z, m.depth_embeddings, pick), unfused.frame(z, m.depth_embeddings, pick))
