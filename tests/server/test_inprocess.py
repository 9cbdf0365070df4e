"""The app in this process, through `create_app(settings, load=...)` and Starlette's TestClient (which runs the
lifespan): the real engine on the tiny checkpoint the tests already loaded, no subprocess, no port. The
real-server tests (harness.py) keep covering uvicorn, signals and the network."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter
from starlette.websockets import WebSocketDisconnect

from server.app import create_app, engine_for
from server.settings import Settings

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
KEY = "sk-inprocess-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tiny):
    settings = Settings(api_keys=[KEY], max_sessions=2, max_context=1024)
    loads: list[Settings] = []

    def load(s: Settings):
        loads.append(s)
        return engine_for(tiny, s)  # the checkpoint is loaded once for the whole test run

    with TestClient(create_app(settings, load=load)) as c:
        assert loads == [settings]  # the lifespan ran the seam, once
        yield c


def _until(ws, kind: str, events: list[dict], limit: int = 2000) -> dict:
    for _ in range(limit):
        event = ws.receive_json()
        SERVER_EVENT.validate_python(event)  # every event parses as the SDK's
        events.append(event)
        if event["type"] == kind:
            return event
    raise AssertionError(f"no {kind} in {limit} events: {[e['type'] for e in events][-20:]}")


def _metric(client, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(client.get("/metrics", headers=AUTH).text)
    return sum(s.value for f in families for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_ready(client):
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["model"] == "tiny" and body["random_weights"] is True
    assert body["slots"] == {"used": 0, "total": 2}


def test_a_text_turn_over_the_websocket(client):
    before = _metric(client, "lfm_audio_sessions_total", transport="websocket")
    events: list[dict] = []
    with client.websocket_connect("/v1/realtime", headers=AUTH) as ws:
        created = _until(ws, "session.created", events)
        assert created["session"]["type"] == "realtime" and created["session"]["model"] == "tiny"
        ws.send_json({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"],
                                                            "max_output_tokens": 12}})
        _until(ws, "session.updated", events)
        ws.send_json({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}})
        _until(ws, "conversation.item.added", events)
        ws.send_json({"type": "response.create"})
        done = _until(ws, "response.done", events)
        assert client.get("/readyz").json()["slots"]["used"] == 1  # the session holds its slot
    response = done["response"]
    assert response["status"] == "incomplete"  # random weights never end a turn: the token limit does
    assert response["output_modalities"] == ["text"]
    assert response["usage"]["output_tokens"] == 12
    types = [e["type"] for e in events]
    assert "response.output_text.delta" in types and "response.output_audio.delta" not in types
    assert _metric(client, "lfm_audio_sessions_total", transport="websocket") == before + 1


def test_refusals_and_rest_errors_carry_one_error_body(client):
    with client.websocket_connect("/v1/realtime", headers={"Authorization": "Bearer wrong"}) as ws:
        refused = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
    assert refused["type"] == "error"
    assert refused["error"] == {"type": "invalid_request_error", "code": "invalid_api_key",
                                "message": "authentication failed: invalid api key", "param": None, "event_id": None}
    r = client.get("/v1/models")
    assert r.status_code == 401
    assert r.json() == {"error": {**refused["error"], "message": "authentication failed: missing credentials"}}
    r = client.post("/v1/audio/speech", headers=AUTH, json={"input": "x", "response_format": "mp3"})
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error", "code": "unsupported_format", "param":
                                 "response_format", "message": "response_format must be wav or pcm", "event_id": None}
    assert _metric(client, "lfm_audio_rejected_sessions_total", reason="auth") >= 2
    assert client.get("/v1/models", headers=AUTH).json()["data"][0]["id"] == "tiny"


def test_metrics(client):
    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"lfm_audio_sessions", "lfm_audio_sessions_active", "lfm_audio_event_loop_lag_seconds"} <= names
