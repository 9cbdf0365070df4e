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


@pytest.fixture(scope="session")
def say(tmp_path_factory):
    """say(text, rate=16000) -> real speech from espeak-ng as float32, trimmed to the speech itself."""
    import shutil
    import subprocess

    import numpy as np

    from streaming.audio import read_wav, resample

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("speech")
    cache: dict = {}

    def make(text: str, rate: int = 16_000):
        if (text, rate) not in cache:
            path = folder / f"{len(cache)}.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            x, src = read_wav(path)
            x = resample(x, src, rate)
            on = np.flatnonzero(np.abs(x) > 0.01)
            cache[text, rate] = x[on[0]:on[-1] + 1]
        return cache[text, rate]

    return make
