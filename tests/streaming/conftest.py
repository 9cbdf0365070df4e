import shutil
import subprocess

import numpy as np
import pytest

from streaming.audio import read_wav, resample


@pytest.fixture(scope="session")
def say(tmp_path_factory):
    """say(text, rate=16000) -> real speech from espeak-ng as float32, trimmed to the speech itself so that a
    test knows where it starts and ends. Cached for the session."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("speech")
    cache: dict[tuple[str, int], np.ndarray] = {}

    def make(text: str, rate: int = 16_000) -> np.ndarray:
        if (text, rate) not in cache:
            path = folder / f"{len(cache)}.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            x, src = read_wav(path)
            x = resample(x, src, rate)
            on = np.flatnonzero(np.abs(x) > 0.01)
            cache[text, rate] = x[on[0] : on[-1] + 1]
        return cache[text, rate]

    return make
