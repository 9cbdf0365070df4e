"""openai-agents (`RealtimeRunner`, `model_config={"url": ...}`), unmodified, with its default settings:
semantic_vad (the end-of-turn model), input transcription, function tools."""

from __future__ import annotations

import pytest

from tests.clients.harness import API_KEY, SERVER_ARGS, ensure_clients, python_client
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    ensure_clients("python")
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"), args=SERVER_ARGS) as srv:
        yield srv


def test_openai_agents_realtime_runner(server, speech_wav):
    found = python_client("openai_agents_client.py", server.ws + "/realtime", API_KEY, speech_wav)
    assert found["session"] == {"turn_detection": "semantic_vad", "tools": ["get_weather"]}
    assert found["spoken"] in ("completed", "incomplete") and found["text"] in ("completed", "incomplete")
    assert found["metadata"] == [{"tag": "agents"}, {"tag": "agents"}]
    assert found["barge_in"] == {"status": "cancelled", "reason": "turn_detected"}
    assert found["errors"] == [], found
