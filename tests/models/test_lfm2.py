"""The LFM2 backbone: prefill chunks and decode steps on per-row state equal one full-sequence pass."""

import pytest
import torch

from models.config import LFM2Config
from models.lfm2 import LFM2, BackboneState
from tests.models.tolerances import LFM2_PASSES_ATOL


def _config(**over) -> LFM2Config:
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, layer_types=["conv", "full_attention", "conv", "full_attention"],
                block_multiple_of=16)
    return LFM2Config.from_dict({**base, **over})


def _model(cfg: LFM2Config) -> LFM2:
    m = LFM2(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return m


@torch.no_grad()
def test_chunks_and_steps_equal_full_pass_per_row():
    cfg = _config()
    m = _model(cfg)
    x = torch.randn(2, 19, 32)
    full = m(x, BackboneState.allocate(cfg, 2, 32), torch.zeros(2, dtype=torch.long))

    state = BackboneState.allocate(cfg, 4, 32)
    outs, pos = [], 0
    for T in [6, 1, 1, 4, 1, 6]:  # prefill chunks mixed with single decode steps
        outs.append(m(x[:, pos:pos + T], state, torch.tensor([pos, pos]), rows=torch.tensor([3, 1])))
        pos += T
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=LFM2_PASSES_ATOL)
    # Rows 0 and 2 were never named: untouched.
    assert state.conv[0][[0, 2]].abs().sum() == 0
    assert state.keys[1][[0, 2]].abs().sum() == 0


@torch.no_grad()
def test_rows_at_different_positions_in_one_batch():
    cfg = _config()
    m = _model(cfg)
    a, b = torch.randn(1, 9, 32), torch.randn(1, 4, 32)
    full_a = m(a, BackboneState.allocate(cfg, 1, 16), torch.tensor([0]))
    full_b = m(b, BackboneState.allocate(cfg, 1, 16), torch.tensor([0]))

    state = BackboneState.allocate(cfg, 2, 16)
    m(a[:, :8], state, torch.tensor([0]), rows=torch.tensor([0]))
    m(b[:, :3], state, torch.tensor([0]), rows=torch.tensor([1]))
    step = m(torch.cat([a[:, 8:9], b[:, 3:4]]), state, torch.tensor([8, 3]))
    torch.testing.assert_close(step[0, 0], full_a[0, 8], rtol=1e-5, atol=LFM2_PASSES_ATOL)
    torch.testing.assert_close(step[1, 0], full_b[0, 3], rtol=1e-5, atol=LFM2_PASSES_ATOL)


@torch.no_grad()
def test_inactive_row_keeps_state_bit_identical():
    cfg = _config()
    m = _model(cfg)
    state = BackboneState.allocate(cfg, 3, 16)
    m(torch.randn(3, 5, 32), state, torch.zeros(3, dtype=torch.long))
    before = [t.clone() for t in (*state.conv, *state.keys, *state.values) if t is not None]
    m(torch.randn(3, 1, 32), state, torch.tensor([5, 5, 5]), active=torch.tensor([True, False, True]))
    after = [t for t in (*state.conv, *state.keys, *state.values) if t is not None]
    for b, a in zip(before, after, strict=True):
        assert torch.equal(b[1], a[1])
        assert not torch.equal(b[[0, 2]], a[[0, 2]])


@torch.no_grad()
def test_reset_row_starts_afresh():
    cfg = _config()
    m = _model(cfg)
    x = torch.randn(1, 6, 32)
    state = BackboneState.allocate(cfg, 1, 16)
    first = m(x, state, torch.tensor([0]))
    m(torch.randn(1, 7, 32), state, torch.tensor([6]))
    state.reset_rows([0])
    torch.testing.assert_close(m(x, state, torch.tensor([0])), first, rtol=0, atol=0)


@torch.no_grad()
def test_sliding_window_ring_equals_masked_full_pass():
    cfg = _config(layer_types=["conv", "sliding_attention", "conv", "sliding_attention"], sliding_window=5)
    m = _model(cfg)
    x = torch.randn(1, 23, 32)
    big = BackboneState.allocate(cfg, 1, 64)  # large enough that nothing wraps: the window is the only limit
    full = m(x, big, torch.tensor([0]))
    ring = BackboneState.allocate(cfg, 1, 5 + 3 - 1)  # window + chunk - 1
    outs = [m(x[:, p:p + 3], ring, torch.tensor([p])) for p in range(0, 21, 3)]
    outs.append(m(x[:, 21:], ring, torch.tensor([21])))
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=LFM2_PASSES_ATOL)

    # and the window really limits: without it the outputs differ
    cfg_full = _config()
    unwindowed = LFM2(cfg_full).eval()
    unwindowed.load_state_dict(m.state_dict())
    other = unwindowed(x, BackboneState.allocate(cfg_full, 1, 64), torch.tensor([0]))
    assert not torch.allclose(other[:, 10:], full[:, 10:], atol=1e-3)


def test_context_overflow_is_an_error():
    cfg = _config()
    m = _model(cfg)
    state = BackboneState.allocate(cfg, 1, 8)
    with pytest.raises(ValueError, match="context overflow"):
        m(torch.randn(1, 9, 32), state, torch.tensor([0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_bf16_rope_uses_rounded_inverse_frequencies(dtype):
    # The reference casts its inv_freq buffer to the model dtype: bf16 rounding must show in cos/sin.
    cfg = _config()
    m = LFM2(cfg).to(dtype)
    cos, _ = m.rope(torch.tensor([[1000]]), torch.float32)
    exact = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    expect = torch.cat([exact, exact]).to(dtype).float() * 1000
    torch.testing.assert_close(cos[0, 0], expect.cos())
