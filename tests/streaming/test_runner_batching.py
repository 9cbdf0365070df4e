"""What a decode step's batch does to a row's numbers, at the backbone: the runner's static mode (every slot,
masked, the whole KV capacity) is bit-exact whoever shares the step; its serving default (only the rows that decode,
attention up to the longest of them) changes the matrix shapes, so bits may differ, within float rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from models.lfm2 import BackboneState

LENGTHS = [37, 120, 5, 260, 64, 90, 11, 200]  # positions each slot holds: ragged, as live sessions are
BATCHES = ([0, 1, 2, 3, 4, 5, 6, 7], [3, 1, 6], [2, 5])
# Measured on the tiny checkpoint (fp32): at most 2.1e-6 between a row batched and alone. 1e-4 leaves room for
# other BLAS kernels and still catches a wrong row, position or mask (those move logits by O(1)).
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def filled(tiny):
    torch.manual_seed(0)
    m, cfg = tiny.model, tiny.model.cfg.lfm
    state = BackboneState.allocate(cfg, len(LENGTHS), 512)
    with torch.inference_mode():
        for row, n in enumerate(LENGTHS):
            m.lfm(torch.randn(1, n, cfg.hidden_size), state, torch.tensor([0]), rows=torch.tensor([row]), kv_len=n)
    return state, torch.randn(len(LENGTHS), cfg.hidden_size)


def _step(m, state, x, rows: list[int], static: bool) -> torch.Tensor:
    """One decode step as streaming/runner.py runs it; returns the text logits of `rows`."""
    state = copy.deepcopy(state)
    pos = torch.tensor(LENGTHS)
    with torch.inference_mode():
        if static:
            active = torch.zeros(len(LENGTHS), dtype=torch.bool)
            active[rows] = True
            y = m.lfm(torch.where(active[:, None], x, 0)[:, None], state, torch.where(active, pos, 0),
                      active=active, kv_len=state.capacity)[:, 0]
            return m.text_logits(y)[rows]  # the heads too run over every slot (decode.sample_items, all_rows)
        y = m.lfm(x[rows][:, None], state, pos[rows], rows=torch.tensor(rows), kv_len=int(pos[rows].max()) + 1)
        return m.text_logits(y[:, 0])


@pytest.mark.parametrize("static", [True, False], ids=["static", "serving-default"])
def test_a_rows_logits_do_not_depend_on_who_shares_its_step(tiny, filled, static):
    state, x = filled
    for rows in BATCHES:
        batched = _step(tiny.model, state, x, rows, static)
        for i, row in enumerate(rows):
            alone = _step(tiny.model, state, x, [row], static)[0]
            if static:
                assert torch.equal(batched[i], alone)
            else:
                torch.testing.assert_close(batched[i], alone, rtol=0, atol=LOGIT_TOLERANCE)
                assert batched[i].argmax() == alone.argmax()
