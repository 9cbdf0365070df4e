"""The decode steps CUDA graphs capture (models/compiled.py), checked on a CPU: no host sync inside a
step, the state written in place at fixed addresses with fixed shapes, one graph without breaks (dense
and int8 weights). A GPU run is still to be done (bench/gpu.sh)."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.compiled import CompiledSteps
from models.config import AUDIO_VOCAB
from models.lfm2 import BackboneState
from models.quant import quantize_model

ROWS, CAPACITY = 3, 64
# ops that copy a device value to the host (.item(), .tolist(), bool(tensor)) or whose output shape
# depends on values: either stalls a stream or cannot be captured
HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item"}


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


@pytest.fixture(params=["dense", "int8"])
def steps(request, tiny):
    model = tiny.model if request.param == "dense" else quantize_model(copy.deepcopy(tiny.model).to(torch.bfloat16),
                                                                       "int8")
    state = BackboneState.allocate(model.cfg.lfm, ROWS, CAPACITY, dtype=model.dtype)
    return CompiledSteps(model, state)


def _inputs(steps, position: int):
    m = steps.model
    x = torch.randn(ROWS, m.cfg.lfm.hidden_size, dtype=m.dtype)
    positions = torch.tensor([position, 0, position + 1])
    active = torch.tensor([True, False, True])
    t, k = torch.tensor([1.0, 0.0, 0.8]), torch.tensor([4, 1, 64])
    noise = torch.empty(ROWS, m.cfg.codebooks, AUDIO_VOCAB).exponential_()
    return x, positions, active, t, k, noise


def test_steps_have_no_host_sync_and_update_state_in_place(steps):
    tensors = [t for t in (*steps.state.conv, *steps.state.keys, *steps.state.values) if t is not None]
    before = [(t.data_ptr(), t.shape) for t in tensors]
    log = _OpLog()
    with torch.inference_mode(), log:
        for position in (0, 5, 17):
            x, positions, active, t, k, noise = _inputs(steps, position)
            h = steps._backbone_step(x, positions, active)
            codes = steps._audio_frame(h, t, k, noise, 64)
            assert h.shape == x.shape and codes.shape == (ROWS, steps.model.cfg.codebooks)
    assert not log.ops & HOST_SYNC_OPS, log.ops & HOST_SYNC_OPS
    assert "index_put_" in log.ops or "index_put" in log.ops  # the state writes were seen at all
    assert [(t.data_ptr(), t.shape) for t in tensors] == before


def test_steps_trace_as_one_graph_each(steps):
    """fullgraph=True fails on any graph break (a .item(), a Python branch on a tensor value); the eager
    backend traces with dynamo only, which keeps this fast."""
    torch._dynamo.reset()
    backbone = torch.compile(steps._backbone_step, backend="eager", fullgraph=True, dynamic=False)
    frame = torch.compile(steps._audio_frame, backend="eager", fullgraph=True, dynamic=False)
    x, positions, active, t, k, noise = _inputs(steps, 3)
    tensors = [t for t in (*steps.state.conv, *steps.state.keys, *steps.state.values) if t is not None]
    with torch.inference_mode():
        saved = [t.clone() for t in tensors]
        eager_h = steps._backbone_step(x, positions, active)
        after_eager = [t.clone() for t in tensors]
        for t_, s in zip(tensors, saved, strict=True):  # the same step again from the same state
            t_.copy_(s)
        traced_h = backbone(x, positions, active)
        assert torch.equal(eager_h, traced_h)
        assert all(torch.equal(a, b) for a, b in zip(after_eager, tensors, strict=True))
        assert torch.equal(steps._audio_frame(eager_h, t, k, noise, 64), frame(traced_h, t, k, noise, 64))
