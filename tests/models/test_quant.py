"""Weight-only int8/int4 (models/quant.py): each layer within its rounding bound, the tiny model's logits
close to bf16's, the flag's checks, and the quantized steps under a full-graph compile."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.clips import clip
from bench.quant_error import measure, run_chat
from models.quant import GROUP_SIZE, Int4Linear, Int8Linear, check_weights, quantize_model

CLIPS_S = 2.0
ITEMS = 40


def _row_bound(x, step_per_input):
    """|y_q - y| per output row <= sum_k |x_k| * step_k / 2: every weight moves by at most half a step."""
    return (x.float().abs() @ step_per_input.T) / 2


def test_int8_layer_within_half_a_step_per_weight():
    w, x = torch.randn(96, 256).bfloat16(), torch.randn(5, 256).bfloat16()
    layer = Int8Linear(w)
    y, exact = layer(x).float(), x.float() @ w.float().T
    step = (layer.scale.float()[:, None]).expand(96, 256)
    # + bf16 rounding of the output (2^-8 relative) and of the scale (2^-8 relative of each |w|)
    slack = exact.abs() * 2 ** -8 + (x.float().abs() @ w.float().abs().T) * 2 ** -8
    assert ((y - exact).abs() <= _row_bound(x, step) + slack).all()
    assert not torch.equal(y, exact)  # it did quantize


def test_int4_layer_within_half_a_step_per_weight():
    w, x = torch.randn(64, 2 * GROUP_SIZE).bfloat16(), torch.randn(3, 2 * GROUP_SIZE).bfloat16()
    layer = Int4Linear(w)
    y, exact = layer(x).float(), x.float() @ w.float().T
    scale = layer.scales_zeros[..., 0].float().T.repeat_interleave(GROUP_SIZE, dim=1)  # [out, in]
    slack = exact.abs() * 2 ** -8 + (x.float().abs() @ w.float().abs().T) * 2 ** -7  # bf16 scale and zero
    assert ((y - exact).abs() <= _row_bound(x, scale) + slack).all()


def test_flag_checks():
    check_weights("dense", torch.float32, "cpu")
    with pytest.raises(ValueError, match="bfloat16"):
        check_weights("int8", torch.float32, "cpu")
    with pytest.raises(ValueError, match="CPU option"):
        check_weights("int8", torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="one of"):
        check_weights("int3", torch.bfloat16, "cpu")


@pytest.fixture(scope="module")
def traces(tiny):
    """The tiny model's greedy 2-turn chat in fp32, and bf16's against it."""
    clips = [clip(CLIPS_S, 0), clip(CLIPS_S, 1)]
    with torch.inference_mode():
        fp32 = run_chat(tiny, tiny.model, clips, ITEMS)
        bf16_model = copy.deepcopy(tiny.model).to(torch.bfloat16)
        bf16_error, bf16 = measure(fp32, tiny, bf16_model, clips, ITEMS)
    return clips, bf16_model, bf16, bf16_error


def test_quantized_logits_stay_close_to_bf16(tiny, traces):
    """The bound: int8's KL against bf16 at most 25x bf16's own KL against fp32. Why 25: KL grows with the
    variance of the logit perturbation, and int8's per-weight rounding (step absmax/127, absmax ~3.5
    sigma) has ~5x the standard deviation of bf16's (step 2^-7.5 of |w| on average): 5^2. int4 (16
    levels per group) must be clearly worse than int8, else it was not applied."""
    clips, bf16_model, bf16, bf16_error = traces
    errors = {}
    with torch.inference_mode():
        for fmt in ("int8", "int4"):
            q = quantize_model(copy.deepcopy(bf16_model), fmt)
            errors[fmt], _ = measure(bf16, tiny, q, clips, ITEMS)
    for kind in ("text", "audio"):
        assert 0 < errors["int8"][f"{kind}_kl"] <= 25 * bf16_error[f"{kind}_kl"], (kind, errors, bf16_error)
        assert errors["int4"][f"{kind}_kl"] > 2 * errors["int8"][f"{kind}_kl"], (kind, errors)
    assert errors["int8"]["text_steps"] == bf16_error["text_steps"] > 0


def test_load_with_int8_weights_generates(tiny_dir):
    from models.checkpoint import load_checkpoint
    from streaming.messages import Mode
    from streaming.offline import Chat

    ckpt = load_checkpoint(tiny_dir, weights="int8")
    assert ckpt.model.dtype == torch.bfloat16 and ckpt.model.weights == "int8"
    assert not any(type(m) is torch.nn.Linear for m in ckpt.model.depthformer.modules())
    chat = Chat(ckpt, capacity=256)
    chat.turn("user", text="hello")
    done = chat.respond(Mode.CHAT, 20)
    assert len(done.items) == 20
    with pytest.raises(ValueError, match="bfloat16"):
        load_checkpoint(tiny_dir, weights="int8", dtype=torch.float32)


def test_text_head_uses_the_quantized_copy(tiny):
    m = quantize_model(copy.deepcopy(tiny.model).to(torch.bfloat16), "int8")
    h = torch.randn(2, tiny.config.lfm.hidden_size).bfloat16()
    dense = F.linear(h, m.lfm.embed_tokens.weight)
    assert torch.equal(m.text_logits(h), m.text_head(h)) and not torch.equal(m.text_logits(h), dense)
