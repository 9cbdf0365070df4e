"""Draining on SIGTERM, against a real `lfm-audio serve` process: readiness goes 503 at once, a new WebSocket
session is refused with HTTP 503 + Retry-After, an idle session is closed at once, the running response reaches
response.done before its session is closed (1001), and the process exits within the grace period. A second
signal stops it at once."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.drain import CLOSE_REASON
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow

GRACE_S = 40  # well above the long response below, even on a loaded 2-core machine
LONG_TOKENS = 400  # frames of 80 ms: a response that runs for seconds, so that SIGTERM lands in the middle
EXIT_SLACK_S = 10  # after the drain: uvicorn's shutdown and the engine's stop, on a loaded machine


async def open_session(server: ServerProcess):
    ws = await websockets.connect(server.ws + "/realtime?model=lfm-audio", max_size=None, open_timeout=30)
    first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert first["type"] == "session.created", first
    return ws


async def ask(ws, max_tokens: int) -> None:
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me a long story"}]}}))
    await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": max_tokens}}))


async def until(ws, kind: str, timeout: float = 120) -> dict:
    async def read() -> dict:
        while True:
            event = json.loads(await ws.recv())
            assert event["type"] != "error", event
            if event["type"] == kind:
                return event

    return await asyncio.wait_for(read(), timeout)


async def closed(ws, timeout: float) -> tuple[int | None, str, list[str]]:
    """Read until the server closes: (code, reason, the event types that came before)."""
    kinds = []
    try:
        async with asyncio.timeout(timeout):
            async for message in ws:
                kinds.append(json.loads(message)["type"])
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason, kinds


def readyz(server: ServerProcess) -> int:
    try:
        return httpx.get(server.base + "/readyz", timeout=5).status_code
    except httpx.ConnectError:
        return 0  # not listening any more: it stopped without draining


async def drain_while_responding(server: ServerProcess) -> dict:
    busy, idle = await open_session(server), await open_session(server)
    await ask(busy, LONG_TOKENS)
    await until(busy, "response.output_audio.delta")
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    seen = {}
    while (status := await asyncio.to_thread(readyz, server)) == 200:
        assert time.monotonic() - signalled < 5, "readiness still 200 five seconds after SIGTERM"
    seen["readyz"], seen["readyz_after_s"] = status, time.monotonic() - signalled
    assert status == 503, f"/readyz: {status or 'connection refused'} right after SIGTERM"
    try:
        await websockets.connect(server.ws + "/realtime?model=lfm-audio", open_timeout=10)
        seen["refusal"] = None
    except InvalidStatus as e:
        seen["refusal"] = e.response
    seen["idle"] = await closed(idle, 10)
    seen["idle_after_s"] = time.monotonic() - signalled
    seen["response_running_then"] = busy.close_code is None
    done = await until(busy, "response.done", GRACE_S)
    seen["done"], seen["done_after_s"] = done, time.monotonic() - signalled
    seen["busy"] = await closed(busy, 10)
    return seen


def test_sigterm_drains_before_stopping(tiny_dir, tmp_path):
    with ServerProcess(tiny_dir, tmp_path, args=["--shutdown-grace-s", str(GRACE_S)]) as server:
        t0 = time.monotonic()
        seen = asyncio.run(drain_while_responding(server))
        server.proc.wait(GRACE_S + EXIT_SLACK_S)
        exited_s = time.monotonic() - t0
        log = server.log()
    print({k: v for k, v in seen.items() if k.endswith("_s")}, f"exited after {exited_s:.1f} s")

    assert seen["readyz"] == 503 and seen["readyz_after_s"] < 2  # 2 s: a signal hop and one HTTP request
    refusal = seen["refusal"]
    assert refusal is not None and refusal.status_code == 503, "a new session was let in while draining"
    assert refusal.headers["Retry-After"] == "1"
    assert json.loads(refusal.body)["error"]["code"] == "server_unavailable"

    idle_code, idle_reason, _ = seen["idle"]
    assert (idle_code, idle_reason) == (1001, CLOSE_REASON)
    # the idle session went at once, while the other one's response still ran
    assert seen["response_running_then"] and seen["idle_after_s"] < seen["done_after_s"]

    assert seen["done"]["response"]["status"] in ("completed", "incomplete"), seen["done"]  # not cut off
    busy_code, busy_reason, after_done = seen["busy"]
    assert (busy_code, busy_reason) == (1001, CLOSE_REASON)
    assert "error" not in after_done
    assert seen["done_after_s"] < GRACE_S

    assert server.proc.returncode in (0, -signal.SIGTERM), log[-3000:]
    drained = [json.loads(line[line.index("{"):]) for line in log.splitlines() if '"event": "drain_end"' in line]
    assert len(drained) == 1 and drained[0]["closed"] == 2 and drained[0]["cut_off"] == 0, log[-3000:]


async def second_signal(server: ServerProcess) -> tuple[float, tuple]:
    ws = await open_session(server)
    await ask(ws, LONG_TOKENS)
    await until(ws, "response.output_audio.delta")
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    result = await closed(ws, 15)
    return time.monotonic() - t0, result


def test_a_second_signal_stops_at_once(tiny_dir, tmp_path):
    with ServerProcess(tiny_dir, tmp_path, args=["--shutdown-grace-s", str(GRACE_S)]) as server:
        after_s, (code, _, kinds) = asyncio.run(second_signal(server))
        server.proc.wait(EXIT_SLACK_S)
    assert "response.done" not in kinds  # the long response was still running: it did not get to finish
    assert code is not None and after_s < EXIT_SLACK_S
