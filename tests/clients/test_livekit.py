"""LiveKit agents 1.8 (livekit-plugins-openai RealtimeModel(base_url=...)), unmodified, with its defaults:
generate_reply() resolves at once (its metadata comes back in response.created), semantic_vad serves turns,
a barge-in cancels the reply being generated and the client's truncate lands; and an AgentSession whose Agent
greets first (on_enter -> generate_reply), run without a LiveKit server on the session's own audio input/output."""

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


def test_livekit_agent_session_greets_first(server, speech_wav):
    found = python_client("livekit_session_client.py", server.base, API_KEY, speech_wav)
    assert found["errors"] == [] and server.log_events("error_sent") == [], found
    # the greeting's audio is played at once, not after generate_reply's timeout
    assert 0 < found["greeting"]["first_audio_s"] < REPLY_TIMEOUT_S / 2 and found["greeting"]["audio_s"] > 0, found
    assert found["spoken"]["audio_s"] > 0, found
    assert found["states"] == ["listening", "speaking", "listening", "speaking", "listening"], found
    assert "user" in found["history"] and found["final_transcripts"] == 1, found
