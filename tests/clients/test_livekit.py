"""LiveKit agents 1.8 (livekit-plugins-openai RealtimeModel(base_url=...)), unmodified, with its defaults:
generate_reply() resolves at once (its metadata comes back in response.created), semantic_vad serves turns,
a barge-in cancels the reply being generated and the client's truncate lands."""

from __future__ import annotations

import pytest

from tests.clients.harness import API_KEY, SERVER_ARGS, ensure_clients, python_client
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow
REPLY_TIMEOUT_S = 10  # LiveKit's own: a generate_reply whose response.created does not match fails after this


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    ensure_clients("python")
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"), args=SERVER_ARGS) as srv:
        yield srv


def test_livekit_realtime_model(server, speech_wav):
    found = python_client("livekit_client.py", server.base, API_KEY, speech_wav)
    assert found["generate_reply_s"] < REPLY_TIMEOUT_S / 2, found
    assert found["greeting"]["audio_s"] > 0 and found["greeting"]["user_initiated"]
    assert found["session"] == {"turn_detection": "semantic_vad", "max_output_tokens": "inf", "voice": "marin"}
    assert found["spoken"]["audio_s"] > 0 and not found["spoken"]["user_initiated"]
    assert ["cancelled", "turn_detected"] in found["statuses"], found
    assert found["truncated"] == 1
    assert found["errors"] == [] and found["server_errors"] == [], found
