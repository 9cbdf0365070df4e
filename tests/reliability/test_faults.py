"""Faults in this process, on the scripted engine: a failure in one slot's model work fails that session alone;
an engine-thread crash flips /readyz and closes every session with a clear error and code; a client that leaves
at any phase of a turn gives its slot and metrics back within a second."""

from __future__ import annotations

import time

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.server.fake_engine import realtime, reply, served
from tests.streaming.fakes import FakeRunner

CLOSE_ERROR = 1011  # server.routes_ws: the session failed
FREED_S = 1.0  # the bar for slot and metrics after a client leaves


def _endless(tiny) -> FakeRunner:
    return FakeRunner(reply=reply(tiny, frames=None), step_s=0.002, keep_plans=False)


def _ask(rt, text: str = "talk", **response) -> None:
    rt.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    rt.send({"type": "response.create", **({"response": response} if response else {})})


def _slot_of(srv, rt) -> int:
    """The engine slot a connection's session holds."""
    (conn,) = [c for c in srv.state.sessions if c.adapter.session_id == rt.events[0]["session"]["id"]]
    table = srv.state.engine.slots._table
    return next(i for i, s in table.items() if s.session == conn.session.handle.id and not s.ephemeral)


def test_a_fault_in_one_slot_fails_that_session_alone(tiny):
    with served(tiny, _endless(tiny)) as srv, realtime(srv.client) as victim, realtime(srv.client) as other:
        for rt in (victim, other):
            rt.update(max_output_tokens=4000, audio={"input": {"turn_detection": None}})
        _ask(other)
        other.until("response.output_audio.delta")
        srv.runner.fail_decode = {_slot_of(srv, victim)}
        _ask(victim)
        error = victim.until("error")["error"]
        with pytest.raises(WebSocketDisconnect) as closed:
            victim.until("never")
        before = len(other.of("response.output_audio.delta"))
        for _ in range(20):  # the other session's speech goes on flowing
            other.until("response.output_audio.delta")
        other.send({"type": "response.cancel"})
        cancelled = other.until("response.done")
        done = other.say("and again", max_output_tokens=12)
        assert srv.slots_used() == 1
        assert srv.metric("lfm_audio_engine_sessions_failed_total") == 1
    assert (error["type"], error["code"]) == ("server_error", "server_error") and "decode" in error["message"]
    assert closed.value.code == CLOSE_ERROR
    assert len(other.of("response.output_audio.delta")) >= before + 20
    assert cancelled["response"]["status"] == "cancelled"
    assert done["response"]["status"] == "incomplete" and done["response"]["usage"]["output_tokens"] == 12
    assert not other.of("error")


def test_an_engine_crash_flips_readiness_and_closes_every_session(tiny):
    with served(tiny, _endless(tiny)) as srv:
        assert srv.client.get("/readyz").status_code == 200
        with realtime(srv.client) as a, realtime(srv.client) as b:
            a.update(max_output_tokens=4000, audio={"input": {"turn_detection": None}})
            _ask(a)
            a.until("response.output_audio.delta")
            srv.runner.crash_at = 0  # the next step raises: a bug in the engine itself
            closes = []
            for rt in (a, b):
                errors = []
                with pytest.raises(WebSocketDisconnect) as closed:
                    while True:
                        event = rt.receive(30)
                        if event["type"] == "error":
                            errors.append(event["error"])
                closes.append((closed.value.code, errors))
        ready = srv.client.get("/readyz")
        with srv.client.websocket_connect("/v1/realtime", headers={"Authorization": "Bearer sk-fake-0123456789"}) as ws:
            refused = ws.receive_json()["error"]
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    for code, errors in closes:
        assert code == CLOSE_ERROR
        assert [e["type"] for e in errors] == ["server_error"] and "engine failure" in errors[0]["message"]
    assert refused["code"] == "server_unavailable"


def _freed(srv) -> float:
    t0 = time.monotonic()
    while (srv.slots_used() or srv.metric("lfm_audio_sessions_active")) and time.monotonic() - t0 < FREED_S + 5:
        time.sleep(0.01)
    return time.monotonic() - t0


@pytest.mark.parametrize("phase", ["speaking", "encoding", "prefill", "first_audio", "mid_response",
                                   "transcription"])
def test_a_client_that_leaves_at_any_phase_frees_its_slot_within_a_second(tiny, say, phase):
    runner = _endless(tiny)
    hold = {"prefill": "prefill", "encoding": "encode"}.get(phase)
    if hold is not None:  # keep the engine inside that phase until the client has gone
        stuck = []

        def step_hook(n: int, plan) -> None:
            if getattr(plan, hold) and not stuck:
                stuck.append(n)
                time.sleep(0.3)
        runner.on_step = step_hook
    with served(tiny, runner) as srv:
        with realtime(srv.client) as rt:
            vad = {"type": "server_vad", "silence_duration_ms": 300} if phase == "speaking" else None
            rt.update(max_output_tokens=4000, audio={"input": {"turn_detection": vad, "transcription":
                                                               {"model": "lfm-audio"} if phase == "transcription"
                                                               else None}})
            if phase == "speaking":
                rt.append(say("I am still talking and", 24000))
                rt.until("input_audio_buffer.speech_started")
            elif phase in ("encoding", "transcription"):
                rt.append(say("Encode me.", 24000))
                rt.send({"type": "input_audio_buffer.commit"})
                rt.until("input_audio_buffer.committed")
            else:
                _ask(rt)
                if phase in ("first_audio", "mid_response"):
                    for _ in range(1 if phase == "first_audio" else 10):
                        rt.until("response.output_audio.delta")
        took = _freed(srv)
        assert srv.client.get("/readyz").status_code == 200
        assert srv.metric("lfm_audio_errors_total") == 0
    assert took < FREED_S, (phase, took)
