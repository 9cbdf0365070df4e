"""pipecat 1.14 (`OpenAIRealtimeLLMService(base_url=...)`), unmodified, with its default settings (server VAD), in
a pipeline of its own: the first run (session instructions, then response.create), a spoken turn (audio in, audio
and its transcript out), a text turn, a barge-in that pipecat follows with a truncate. pipecat ends its session on
any error event but the cancel / active-response ones, so none may reach it."""

from __future__ import annotations

import pytest

from tests.clients.harness import API_KEY, SERVER_ARGS, ensure_clients, python_client
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow
FIRST_AUDIO_BOUND_S = 30  # the first response (connect, session.update, a capped reply) on a loaded 2-core box


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    ensure_clients("python")
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"), args=SERVER_ARGS) as srv:
        yield srv


def test_pipecat_realtime_service(server, speech_wav):
    found = python_client("pipecat_client.py", server.ws + "/realtime", API_KEY, speech_wav)
    assert found["errors"] == [] and server.log_events("error_sent") == [], found
    assert found["instructions"] == "You are a helpful voice assistant. Greet the user."
    assert found["first"]["audio_s"] > 0 and found["first"]["seconds"] < FIRST_AUDIO_BOUND_S
    replies = [found[k] for k in ("first", "spoken", "text", "after_barge_in")]
    assert all(r["audio_s"] > 0 for r in replies), found
    assert any(r["transcript"] for r in replies), found  # the audio's transcript reached pipecat as TTSTextFrames
    statuses = [(t["status"], t["reason"]) for t in server.log_events("turn")]
    assert ("cancelled", "turn_detected") in statuses, statuses
    # pipecat truncates at most what it received of the interrupted reply (min(wall clock, audio received))
    last = found["truncates"][-1]
    assert 0 < last["audio_end_ms"] <= found["interrupted"]["audio_s"] * 1000 + 1, found
    assert {"session.update", "response.create", "conversation.item.create",
            "conversation.item.truncate"} <= set(found["sent"])
