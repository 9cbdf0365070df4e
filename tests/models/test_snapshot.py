"""A backbone row goes back to an earlier point exactly: its conv state from a snapshot, its KV cache by position
(what a dropped speculative prefill leaves behind is never read)."""

import pytest
import torch

from models.lfm2 import BackboneState
from tests.models.test_lfm2 import _config, _model


@torch.no_grad()
def test_restored_row_continues_bit_identically_and_other_rows_are_untouched():
    cfg = _config()
    m = _model(cfg)
    a, spec, c, step = torch.randn(2, 6, 32), torch.randn(1, 9, 32), torch.randn(1, 4, 32), torch.randn(1, 1, 32)
    direct = BackboneState.allocate(cfg, 2, 32)
    m(a, direct, torch.zeros(2, dtype=torch.long))
    want = m(c, direct, torch.tensor([6]), rows=torch.tensor([0]))
    want_step = m(step, direct, torch.tensor([10]), rows=torch.tensor([0]), kv_len=32)

    state = BackboneState.allocate(cfg, 2, 32)
    m(a, state, torch.zeros(2, dtype=torch.long))
    other = [t[1].clone() for t in (*state.conv, *state.keys, *state.values) if t is not None]
    saved = state.snapshot_row(0)
    m(spec, state, torch.tensor([6]), rows=torch.tensor([0]))  # speculative work, then dropped
    assert not all(torch.equal(s, t[0]) for s, t in zip(saved, state.conv, strict=True) if t is not None)
    state.restore_row(0, saved)
    got = m(c, state, torch.tensor([6]), rows=torch.tensor([0]))
    # kv_len = the capacity reads every entry, the dropped positions 10..14 included: the mask hides them
    got_step = m(step, state, torch.tensor([10]), rows=torch.tensor([0]), kv_len=32)
    assert torch.equal(got, want) and torch.equal(got_step, want_step)
    after = [t[1] for t in (*state.conv, *state.keys, *state.values) if t is not None]
    assert all(torch.equal(x, y) for x, y in zip(other, after, strict=True))


def test_a_ring_cache_or_a_foreign_snapshot_is_refused():
    ring = BackboneState.allocate(_config(layer_types=["conv", "sliding_attention", "conv", "sliding_attention"],
                                          sliding_window=4), 1, 8)
    with pytest.raises(ValueError, match="ring"):
        ring.snapshot_row(0)
    state = BackboneState.allocate(_config(), 1, 8)
    with pytest.raises(ValueError, match="layers"):
        state.restore_row(0, state.snapshot_row(0)[:2])
