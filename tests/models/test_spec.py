"""The full-size model, built on the meta device, has exactly the official tensor names, shapes and
dtypes of LiquidAI/LFM2-Audio-1.5B's model.safetensors (shared/spec). No weights needed."""

import json
from pathlib import Path

import torch

from models.lfm2_audio import LFM2AudioModel
from models.random_checkpoint import disk_dtype, full_config

SPEC = Path(__file__).resolve().parents[1] / "golden" / "spec"  # copied from shared/spec
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "int64": torch.int64}


def _spec(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    tensors = json.loads((SPEC / name).read_text())["tensors"]
    return {t["name"]: (tuple(t["shape"]), DTYPES[t["dtype"]]) for t in tensors}


def test_full_model_matches_official_checkpoint_layout():
    spec = _spec("lfm2_audio_1.5b.model.safetensors.json")
    with torch.device("meta"):
        model = LFM2AudioModel(full_config())
    # what `make-checkpoint --size full` writes for each tensor
    ours = {k: (tuple(v.shape), disk_dtype(k, v.dtype)) for k, v in model.state_dict().items()}
    assert sorted(set(spec) - set(ours)) == []
    assert sorted(set(ours) - set(spec)) == []
    wrong = {k: (ours[k], spec[k]) for k in spec if ours[k] != spec[k]}
    assert wrong == {}
    assert len(ours) == 931
    assert sum(v.numel() for v in model.state_dict().values()) == 1_470_308_513
