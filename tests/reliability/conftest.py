"""One real server (`lfm-audio serve`, the tiny checkpoint, an API key) for the live fuzzer and the audio edge
cases: a server start is the dearest part of either."""

from __future__ import annotations

import pytest

from tests.server.harness import ServerProcess

LIVE_KEY = "sk-fuzz-live-0123456789"


@pytest.fixture(scope="session")
def live_server(tiny_dir, tmp_path_factory):
    # slots to spare: an item's input transcription takes one while it runs, beside its session's
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("live"), env={"LFM_AUDIO_API_KEYS": LIVE_KEY},
                       args=["--max-sessions", "6"]) as srv:
        yield srv
