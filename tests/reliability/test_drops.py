"""Clients that vanish, against a real server (`lfm-audio serve` in a subprocess): a dropped TCP connection at
any moment of a session is an ordinary end of that session. The slot comes back, and the log says
`session_end`, not "Exception in ASGI application" with a traceback."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
import websockets

from tests.server.harness import ServerProcess

KEY = "sk-drops-0123456789"
FREED_S = 1.0  # the bar: slot and metrics back to baseline within a second of the drop


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("drops"), env={"LFM_AUDIO_API_KEYS": KEY}) as srv:
        yield srv


async def _open(server) -> websockets.ClientConnection:
    ws = await websockets.connect(server.ws + "/realtime", additional_headers={"Authorization": f"Bearer {KEY}"})
    assert json.loads(await ws.recv())["type"] == "session.created"
    return ws


async def _until(ws, kind: str) -> dict:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if event["type"] == kind:
            return event


def _slots_used(server) -> int:
    return httpx.get(server.base + "/readyz", timeout=5).json()["slots"]["used"]


def _active(server) -> float:
    return sum(float(line.split()[-1]) for line in server.metrics().splitlines()
               if line.startswith("lfm_audio_sessions_active{"))


def _freed_within(server, seconds: float) -> float:
    """Seconds until the slot is free and the active-sessions gauge is back to 0 (gives up after 5 s more)."""
    t0 = time.monotonic()
    while (_slots_used(server) or _active(server)) and time.monotonic() - t0 < seconds + 5:
        time.sleep(0.02)
    return time.monotonic() - t0


async def _user_turn(ws) -> None:
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "talk to me"}]}}))
    await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 400}}))


async def _phase(server, phase: str) -> None:
    ws = await _open(server)
    if phase == "speaking":  # mid input audio, server VAD on
        chunk = base64.b64encode(bytes(1920)).decode()
        for _ in range(20):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
    elif phase == "requested":  # right after response.create, before any reply
        await _user_turn(ws)
    elif phase == "first_audio":
        await _user_turn(ws)
        await _until(ws, "response.output_audio.delta")
    elif phase == "mid_response":
        await _user_turn(ws)
        for _ in range(5):
            await _until(ws, "response.output_audio.delta")
    ws.transport.abort()  # no close frame: the TCP connection is simply gone


@pytest.mark.slow
async def test_a_dropped_connection_at_every_phase_frees_its_slot_quietly(server):
    before = len(server.log_events("session_end"))
    for phase in ("idle", "speaking", "requested", "first_audio", "mid_response"):
        await _phase(server, phase)
        took = await asyncio.to_thread(_freed_within, server, FREED_S)
        assert took < FREED_S, (phase, took)
        print(f"{phase}: slot and gauge back in {took:.3f} s")
    await asyncio.sleep(0.3)  # the log lines of the last session
    log = server.log()
    assert len(server.log_events("session_end")) - before == 5
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-3000:]
    assert KEY not in log  # keys are never logged (uvicorn's access lines included)
    errors = [line for line in server.metrics().splitlines() if line.startswith("lfm_audio_errors_total{")]
    assert all(float(line.split()[-1]) == 0 for line in errors), errors  # a drop is no error
