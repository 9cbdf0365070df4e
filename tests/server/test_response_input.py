"""response.create `input` (OpenAI: a context of the response's own) for an out-of-band response: the model sees
the instructions and exactly those items (references to the conversation's items, messages given inline), the
conversation is laid out whole again afterwards, and what cannot be honoured is refused naming its param. In
process, on the scripted runner (its prefills are what the model was fed)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import Loaded, create_app
from server.settings import Settings
from streaming.audio import float_to_pcm16
from streaming.engine import Engine, EngineConfig
from tests.server.test_compat import Conn, Model


@pytest.fixture(scope="module")
def app(tiny):
    model = Model(tiny.tokenizer)

    def load(s: Settings) -> Loaded:
        return Loaded(Engine(tiny, EngineConfig(max_sessions=2, max_context=1024), runner=model.runner), "tiny",
                      "fake", True)

    with TestClient(create_app(Settings(max_sessions=2, max_context=1024), load=load)) as client:
        yield client, model


@pytest.fixture
def conn(app):
    client, _ = app
    with client.websocket_connect("/v1/realtime") as ws:
        c = Conn(ws)
        c.until("session.created")
        yield c


def _message(text: str, role: str = "user") -> dict:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def _add(conn: Conn, text: str) -> str:
    conn.send({"type": "conversation.item.create", "item": _message(text)})
    return conn.until("conversation.item.added")["item"]["id"]


def _fed_since(model: Model, n: int) -> str:
    """Everything the model was fed by the prefills after the first n (a rebuilt row: the whole layout)."""
    return "".join(model.prefills()[n:])


def test_the_response_sees_exactly_its_input(app, conn):
    _, model = app
    first, _second, third = _add(conn, "Alpha apples."), _add(conn, "Beta bananas."), _add(conn, "Gamma grapes.")
    n = len(model.prefills())
    conn.send({"type": "response.create", "response": {
        "conversation": "none", "max_output_tokens": 5, "metadata": {"kind": "summary"},
        "instructions": "Summarise.", "input": [
            {"type": "item_reference", "id": first}, _message("Delta dates.", "system"),
            {"type": "item_reference", "id": third}]}})
    done = conn.until("response.done")
    assert done["response"]["metadata"] == {"kind": "summary"} and not conn.of("error"), conn.of("error")
    fed = _fed_since(model, n)
    assert "Summarise." in fed
    order = [fed.find(t) for t in ("Alpha apples.", "Delta dates.", "Gamma grapes.")]
    assert -1 not in order and order == sorted(order), fed
    assert "Beta bananas." not in fed  # not in the input: not in the context
    # afterwards the conversation is the whole conversation again, without the inline message
    n = len(model.prefills())
    conn.send({"type": "response.create", "response": {"max_output_tokens": 5}})
    conn.until("response.done")
    fed = _fed_since(model, n)
    assert all(t in fed for t in ("Alpha apples.", "Beta bananas.", "Gamma grapes.")), fed
    assert "Delta dates." not in fed and "Summarise." not in fed


def test_an_empty_input_is_the_instructions_alone(app, conn):
    _, model = app
    _add(conn, "Epsilon eggs.")
    n = len(model.prefills())
    conn.send({"type": "response.create", "response": {"conversation": "none", "input": [],
                                                       "max_output_tokens": 3}})
    conn.until("response.done")
    assert "Epsilon eggs." not in _fed_since(model, n)


@pytest.mark.parametrize(("response", "param", "code"), [
    ({"conversation": "none", "input": [{"type": "item_reference", "id": "item_nope"}]},
     "response.input.0.id", "item_not_found"),
    ({"conversation": "none", "input": [{"type": "item_reference"}]}, "response.input.0.id", "invalid_value"),
    ({"input": [_message("x")]}, "response.input", "invalid_value"),  # conversation "auto": not honoured
    ({"conversation": "none", "input": [{"type": "function_call_output", "call_id": "c", "output": "{}"}]},
     "response.input.0.type", "invalid_value"),
    ({"conversation": "none", "input": [{"type": "message", "role": "user", "content": []}]},
     "response.input.0.content", "invalid_value"),
])
def test_what_cannot_be_honoured_is_refused_by_name(conn, response, param, code):
    conn.send({"type": "response.create", "event_id": "r1", "response": response})
    err = conn.until("error")["error"]
    assert (err["code"], err["param"], err["event_id"]) == (code, param, "r1"), err
    # nothing was started: the session answers the next request at once
    conn.send({"type": "response.create", "response": {"max_output_tokens": 2}})
    assert conn.until("response.done")["response"]["status"] in ("completed", "incomplete")
    assert len(conn.of("response.created")) == 1


def test_references_follow_the_conversations_order(conn):
    first, second = _add(conn, "one"), _add(conn, "two")
    conn.send({"type": "response.create", "response": {"conversation": "none", "input": [
        {"type": "item_reference", "id": second}, {"type": "item_reference", "id": first}]}})
    err = conn.until("error")["error"]
    assert err["param"] == "response.input.1.id" and "order" in err["message"]


def test_an_inline_clip_is_encoded_for_the_response(app, conn):
    _, model = app
    pcm = float_to_pcm16(0.1 * np.sin(np.arange(7_200) / 5)).tobytes()  # 300 ms at 24 kHz: over the 100 ms floor
    encodes = sum(len(p.encode) for p in model.runner.plans)
    conn.send({"type": "response.create", "response": {"conversation": "none", "max_output_tokens": 3, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_audio",
                                                         "audio": base64.b64encode(pcm).decode()}]}]}})
    assert conn.until("response.done")["response"]["status"] in ("completed", "incomplete")
    assert not conn.of("error") and sum(len(p.encode) for p in model.runner.plans) == encodes + 1
