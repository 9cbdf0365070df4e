"""openai-python (the project's dev extra), unmodified, against a real server: a spoken turn under server VAD,
response.create with instructions and metadata, a text turn, an out-of-band response on its own input (an item
reference and an inline message), barge-in and truncate, OpenAI's cancel error."""

from __future__ import annotations

import pytest

from tests.clients.harness import API_KEY, SERVER_ARGS, main_python
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"), args=SERVER_ARGS) as srv:
        yield srv


def test_openai_python_realtime(server, speech_wav):
    found = main_python("openai_python.py", server.base, API_KEY, speech_wav)
    assert found["turn_detection"] == "server_vad"
    assert found["spoken"]["status"] in ("completed", "incomplete")
    assert found["instructions"]["created_metadata"] == {"tag": "greet"} == found["instructions"]["done_metadata"]
    assert found["text"]["modalities"] == ["text"]
    assert found["out_of_band"] == {**found["out_of_band"], "conversation_id": None}
    assert found["out_of_band"]["status"] in ("completed", "incomplete")
    assert found["barge_in"] == {**found["barge_in"], "status": "cancelled", "reason": "turn_detected",
                                 "truncated": True}
    assert found["cancel_error"] == {"code": "response_cancel_not_active",
                                     "message": "Cancellation failed: no active response found"}
    assert found["errors"] == ["response_cancel_not_active"], found  # nothing else was refused
