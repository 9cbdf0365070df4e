"""What OpenAI Realtime clients rely on, in process on a scripted runner (tests/streaming/fakes.py): a
session.update applies all it can and names what it cannot; semantic_vad is served by the end-of-turn model; OpenAI's
error codes and texts; response.create's parameters and metadata; function calling in LFM2's format; one log
line and a count per error sent."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from models.generation import Modality
from server.app import Loaded, create_app
from server.settings import Settings
from streaming.engine import Engine, EngineConfig
from tests.streaming.fakes import FakeRunner

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Model:
    """The scripted model: the text tokens it writes next, in order (then the fake's default)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.text: list[int] = []
        self.runner = FakeRunner(on_step=self._step)

    def say(self, *pieces: str) -> None:
        for piece in pieces:
            self.text.extend(self.tokenizer.encode(piece))

    def _step(self, n, plan) -> None:
        for d in plan.decode:
            self.runner.script[d.slot] = [self.text.pop(0)] if d.want == Modality.TEXT and self.text else []

    def prefills(self) -> list[str]:
        """What each prefill fed, as text (special tokens written out)."""
        return [self.tokenizer.decode([i for seg in p.segments if seg.kind == Modality.TEXT for i in seg.data],
                                      skip_special=False) for plan in self.runner.plans for p in plan.prefill]


@pytest.fixture(scope="module")
def app(tiny):
    model = Model(tiny.tokenizer)
    settings = Settings(max_sessions=2, max_context=1024)

    def load(s: Settings) -> Loaded:
        return Loaded(Engine(tiny, EngineConfig(max_sessions=2, max_context=1024), runner=model.runner), "tiny",
                      "fake", True)

    with TestClient(create_app(settings, load=load)) as client:
        yield client, model


class Conn:
    def __init__(self, ws) -> None:
        self.ws, self.events = ws, []

    def send(self, event: dict) -> None:
        self.ws.send_json(event)

    def until(self, kind: str, limit: int = 3000) -> dict:
        for _ in range(limit):
            event = self.ws.receive_json()
            SERVER_EVENT.validate_python(event)
            self.events.append(event)
            if event["type"] == kind:
                return event
        raise AssertionError(f"no {kind}: {[e['type'] for e in self.events][-20:]}")

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture
def conn(app):
    client, _ = app
    with client.websocket_connect("/v1/realtime") as ws:
        c = Conn(ws)
        c.until("session.created")
        yield c


def _text_turn(conn: Conn, text: str = "hi", **response) -> dict:
    conn.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                             "content": [{"type": "input_text", "text": text}]}})
    conn.send({"type": "response.create", "response": {"max_output_tokens": 20, **response}})
    return conn.until("response.done")


def test_an_update_applies_what_it_can_and_names_the_rest(conn):
    conn.send({"type": "session.update", "event_id": "u1", "session": {
        "type": "realtime", "instructions": "Be brief.", "max_output_tokens": "inf", "tools": [WEATHER],
        "tool_choice": "auto", "tracing": "auto",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "noise_reduction": {"type": "near_field"},
                            "turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
                  "output": {"voice": "marin", "speed": 1.0}}}})
    updated = conn.until("session.updated")
    errors = [e["error"] for e in conn.of("error")]
    params = sorted(e["param"] for e in errors)
    assert params[0].startswith("session.audio.input.format") and params[1] == "session.audio.input.noise_reduction"
    assert len(params) == 2
    assert all(e["event_id"] == "u1" for e in errors)
    session = updated["session"]
    assert session["instructions"] == "Be brief." and session["max_output_tokens"] == "inf"
    assert session["audio"]["output"]["voice"] == "marin"
    assert [t["name"] for t in session["tools"]] == ["get_weather"] and session["tool_choice"] == "auto"
    td = session["audio"]["input"]["turn_detection"]
    assert td["type"] == "semantic_vad" and td["eagerness"] == "low"
    assert "turn_detection" not in session["lfm_audio"]  # served by the end-of-turn model itself
    assert session["audio"]["input"]["format"]["rate"] == 24000  # the refused format is not in force


def test_openai_error_codes_and_texts(conn):
    conn.send({"type": "response.cancel", "event_id": "c1"})
    err = conn.until("error")["error"]
    assert (err["code"], err["message"]) == ("response_cancel_not_active",
                                             "Cancellation failed: no active response found")
    conn.send({"type": "response.create", "response": {"max_output_tokens": 200}})
    created = conn.until("response.created")
    conn.send({"type": "response.create", "event_id": "c2"})
    err = conn.until("error")["error"]
    assert err["code"] == "conversation_already_has_active_response" and err["event_id"] == "c2"
    assert err["message"].startswith("Conversation already has an active response in progress: "
                                     + created["response"]["id"])
    conn.until("response.done")
    conn.send({"type": "input_audio_buffer.commit"})
    err = conn.until("error")["error"]
    assert err["message"].startswith("Error committing input audio buffer: buffer too small. Expected at least "
                                     "100ms of audio")


def test_response_parameters_and_metadata_are_honoured_and_echoed(app, conn):
    _, model = app
    done = _text_turn(conn, metadata={"client_event_id": "r1"}, instructions="Answer in French.",
                      output_modalities=["text"], max_output_tokens=7)
    created = conn.of("response.created")[-1]["response"]
    assert created["metadata"] == done["response"]["metadata"] == {"client_event_id": "r1"}
    assert done["response"]["output_modalities"] == ["text"] and done["response"]["status"] == "incomplete"
    assert done["response"]["usage"]["output_tokens"] == 7
    assert "Answer in French." in model.prefills()[-1]
    # the session's instructions are back for the next response
    _text_turn(conn)
    assert "Answer in French." not in model.prefills()[-1]
    # out of band: answered, echoed, not kept in the conversation
    conn.events.clear()
    done = _text_turn(conn, conversation="none", metadata={"topic": "summary"})
    item_id = done["response"]["output"][0]["id"]
    assert done["response"]["conversation_id"] is None and done["response"]["metadata"] == {"topic": "summary"}
    assert not [e for e in conn.of("conversation.item.added") if e["item"]["id"] == item_id]
    conn.send({"type": "conversation.item.retrieve", "item_id": item_id})
    assert conn.until("error")["error"]["code"] == "item_not_found"


def test_a_deferred_response_keeps_its_parameters(conn):
    conn.send({"type": "response.create", "response": {"max_output_tokens": 300}})
    conn.until("response.created")
    conn.send({"type": "response.cancel"})
    conn.send({"type": "response.create", "response": {"metadata": {"n": "2"}, "max_output_tokens": 5}})
    first = conn.until("response.done")
    assert first["response"]["status"] == "cancelled"
    second = conn.until("response.done")
    assert second["response"]["metadata"] == {"n": "2"} and second["response"]["usage"]["output_tokens"] == 5


def test_tools_reach_the_prompt_in_lfm2_format(app, conn):
    _, model = app
    conn.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Help.",
                                                     "tools": [WEATHER]}})
    conn.until("session.updated")
    _text_turn(conn)
    prompt = model.prefills()[-1]
    listed = json.dumps({k: WEATHER[k] for k in ("name", "description", "parameters")})
    assert f"<|im_start|>system\nHelp.\nList of tools: <|tool_list_start|>[{listed}]<|tool_list_end|><|im_end|>" \
        in prompt
    conn.send({"type": "session.update", "session": {"type": "realtime", "tool_choice": "none"}})
    conn.until("session.updated")
    _text_turn(conn)
    assert "<|tool_list_start|>" not in model.prefills()[-1]


def test_a_function_call_is_streamed_and_its_output_continues_the_response(app, conn):
    _, model = app
    conn.send({"type": "session.update", "session": {"type": "realtime", "tools": [WEATHER],
                                                     "output_modalities": ["text"]}})
    conn.until("session.updated")
    model.say("Let me look.", "<|tool_call_start|>", '[get_weather(city="Paris")]', "<|tool_call_end|>", "<|im_end|>")
    done = _text_turn(conn, "weather in Paris?", max_output_tokens=200)
    call = done["response"]["output"][1]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert done["response"]["output"][0]["content"][0]["text"] == "Let me look."  # the call is not said
    args = conn.of("response.function_call_arguments.done")[-1]
    assert (args["call_id"], args["item_id"], args["output_index"]) == (call["call_id"], call["id"], 1)
    assert "".join(e["delta"] for e in conn.of("response.function_call_arguments.delta")) == call["arguments"]
    assert [e["item"]["type"] for e in conn.of("response.output_item.added")][-2:] == ["message", "function_call"]
    # the client runs the function and asks for the rest
    conn.send({"type": "conversation.item.create", "item": {"type": "function_call_output",
                                                             "call_id": call["call_id"], "output": '{"temp": 21}'}})
    added = conn.until("conversation.item.added")
    assert added["item"]["type"] == "function_call_output" and added["previous_item_id"] == call["id"]
    conn.send({"type": "response.create", "response": {"max_output_tokens": 10}})
    conn.until("response.done")
    prompt = model.prefills()[-1]
    assert '<|im_start|>tool\n<|tool_response_start|>{"temp": 21}<|tool_response_end|><|im_end|>' in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_a_history_with_function_calls_is_accepted_as_context(app, conn):
    _, model = app
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "cold"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is cold."}]},
    ]
    for item in history:
        conn.send({"type": "conversation.item.create", "item": item})
        conn.until("conversation.item.added")
    assert not conn.of("error")
    conn.send({"type": "response.create", "response": {"max_output_tokens": 5}})
    conn.until("response.done")
    prompt = model.prefills()[-1]
    assert ('<|im_start|>assistant\n<|tool_call_start|>[get_weather(city="Oslo")]<|tool_call_end|><|im_end|>\n'
            '<|im_start|>tool\n<|tool_response_start|>cold<|tool_response_end|><|im_end|>') in prompt


def test_each_error_sent_is_logged_and_counted(app, conn, caplog):
    client, _ = app

    def count() -> float:
        return sum(s.value for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples
                   if s.name == "lfm_audio_error_events_total" and s.labels["code"] == "item_not_found")

    before = count()
    with caplog.at_level(logging.INFO, logger="lfm_audio.session"):
        conn.send({"type": "conversation.item.delete", "item_id": "nope", "event_id": "d1"})
        conn.until("error")
    lines = [json.loads(r.getMessage()) for r in caplog.records if '"error_sent"' in r.getMessage()]
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("code", "param", "client_event_type", "client_event_id")} == {
        "code": "item_not_found", "param": "item_id", "client_event_type": "conversation.item.delete",
        "client_event_id": "d1"}
    assert lines[0]["session"].startswith("sess_")
    assert count() == before + 1
