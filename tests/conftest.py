from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "golden" / "assets"
SPEC_DIR = Path(__file__).parent / "golden" / "spec"  # a copy of shared/spec: the official tensor layouts


def pytest_configure(config):
    # Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP waits make small ops
    # up to 100x slower. Tests that measure threading set their own count.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The embedded default's recipe: tiny, seed 0, both audio decoders."""
    from models.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0, detokenizer="both")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from models.checkpoint import load_checkpoint

    return load_checkpoint(tiny_dir, dtype=torch.float32)
