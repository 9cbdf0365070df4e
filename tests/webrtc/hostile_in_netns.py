"""WebRTC calls from hostile or broken peers, against one real server, inside a private network namespace with
only `lo` (test_calls.py runs this file under `unshare -n`, like calls_in_netns.py).

Each case: a clear HTTP error or a clean teardown, no traceback in the server log, the slot and the sessions
gauge back to baseline, and a session alongside unaffected.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from tests.server.harness import ServerProcess
from tests.webrtc.calls_in_netns import (  # noqa: F401 (its two netns fixtures apply here too)
    LOOPBACK,
    TURN,
    _client_candidates,
    _lo_only,
    silence,
    used,
    wait_used,
)
from tests.webrtc.client import Client

pytestmark = pytest.mark.slow
# The server's --webrtc-peer-timeout-s here: a loopback call connects in ~0.1 s even on a loaded 2-core machine
# (30x less), and each timeout case then takes a few seconds instead of the default's 15.
PEER_TIMEOUT_S = 3.0
FREED_WITHIN_S = PEER_TIMEOUT_S + 2.0  # the watchdog wakes within the timeout; closing the peer takes < 1 s more
MUTANTS = 24  # offer mutants per run (of 82: two per line of a loopback-only offer)
SESSION = {"type": "realtime", "max_output_tokens": 40, "audio": {"input": {"turn_detection": TURN}}}


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    # 16 slots: about half of the offer mutants are answered, and each holds a slot until the timeout frees it
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"),
                       args=[*LOOPBACK, "--webrtc-peer-timeout-s", str(PEER_TIMEOUT_S), "--max-sessions", "16"]) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean_log(server):
    """After every case: nothing raised anywhere in the server (handlers, aiortc's tasks) and no slot held."""
    yield
    log = server.log()
    for bad in ("Traceback", "Exception in ASGI application", "Task exception was never retrieved"):
        assert bad not in log, log[-4000:]
    assert used(server) == 0


@pytest.fixture
async def peers():
    made: list = []

    def make(pc=None, **kw):
        made.append(pc if pc is not None else Client(**kw))
        return made[-1]

    yield make
    for p in made:
        await p.close()


def webrtc_active(server) -> float:
    """The sessions_active gauge of the webrtc transport, from /metrics."""
    found = re.search(r'^lfm_audio_sessions_active\{transport="webrtc"\} (\S+)$', server.metrics(), re.M)
    assert found, "no lfm_audio_sessions_active{transport=webrtc} in /metrics"
    return float(found.group(1))


async def offer_of(pc) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def post(server, body: bytes | str, kind: str = "application/sdp") -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(server.base + "/v1/realtime/calls", content=body, headers={"Content-Type": kind})


async def post_when_admitted(server, body: str) -> httpx.Response:
    """POST an offer; while the server is full (the answered mutants hold the slots until they time out), retry
    until a slot is freed, so that every offer gets as far as the server takes it."""
    deadline = time.monotonic() + FREED_WITHIN_S
    while (r := await post(server, body)).status_code == 503 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return r


def without(sdp: str, *prefixes: str) -> str:
    return "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith(prefixes))


def ends(server, reason: str) -> list[dict]:
    return [e for e in server.log_events("session_end") if e["transport"] == "webrtc" and e["reason"] == reason]


async def test_malformed_offers_get_a_clear_error(server, peers):
    sdp = await offer_of(peers().pc)
    audio = sdp.index("m=audio")
    clear = {  # each of these can only be refused
        "empty": b"",
        "binary": bytes(range(256)) * 40,
        "not utf-8": b"\xff\xfe\x00" + sdp.encode()[:200],
        "truncated in the audio section": sdp[:audio + 40],
        "oversized": sdp + "a=x-padding:" + "y" * 200_000 + "\r\n",
        "no media": without(sdp, "m=", "a=", "c="),
        "garbage audio port": re.sub(r"^m=audio \d+", "m=audio x", sdp, count=1, flags=re.M),
        # aiortc takes these, then fails in its connect task and close() (was a 500 and a task traceback)
        "BUNDLE names a section with no mid": without(sdp, "a=mid:0"),
        "BUNDLE names a dropped section": without(sdp, "m=application"),
        # aiortc takes this, then fails to create the answer (was a 500)
        "audio with no direction": without(sdp, "a=sendrecv"),
    }
    for name, body in clear.items():
        r = await post(server, body)
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["code"] == "invalid_offer" and err["message"], (name, err)
    for part in ("{not json", "[1, 2]"):
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(server.base + "/v1/realtime/calls", files={"sdp": (None, sdp), "session": (None, part)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_offer", r.text
    assert used(server) == 0

    # Lines of a real offer dropped or their values garbled: refused with the error shape, or answered (a 201
    # whose peer never connects: the timeout frees its slot). Never a 5xx. Answered ones hold a slot for the
    # timeout, so a run takes a seeded sample (SDP_MUTANTS=all for all 82: about a minute here).
    lines = sdp.splitlines(keepends=True)
    mutants = ["".join(lines[:i] + lines[i + 1:]) for i in range(len(lines))]
    mutants += ["".join([*lines[:i], line.split(":", 1)[0] + ":\x00%\xff garbled\r\n", *lines[i + 1:]])
                for i, line in enumerate(lines)]
    count = os.environ.get("SDP_MUTANTS", str(MUTANTS))
    if count != "all":
        mutants = random.Random(int(os.environ.get("SDP_MUTANTS_SEED", "0"))).sample(mutants, int(count))
    codes: dict[int, int] = {}
    t0 = time.monotonic()
    for body in mutants:
        r = await post_when_admitted(server, body)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        assert r.status_code in (201, 400), (r.status_code, r.text[:300], body)
        if r.status_code == 400:
            assert r.json()["error"]["code"] == "invalid_offer" and r.json()["error"]["message"], r.text
    assert codes.get(400, 0) >= len(mutants) // 4, codes  # many are refused outright (29 of the 82)
    # the answered ones never connect: the watchdog frees their slots
    assert await wait_used(server, 0, within=FREED_WITHIN_S + (time.monotonic() - t0)) >= 0
    assert webrtc_active(server) == 0


async def test_offers_without_audio_are_refused(server, peers):
    data_only = peers(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    data_only.createDataChannel("oai-events")
    video = peers(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    video.addTransceiver("video")
    video.createDataChannel("oai-events")
    for pc in (data_only, video):
        r = await post(server, await offer_of(pc))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["code"], err["message"]) == ("invalid_offer", "the offer has no audio m-line"), err
    assert used(server) == 0 and webrtc_active(server) == 0


async def test_a_peer_that_never_completes_ice(server, peers, say):
    ghost = peers()
    r = await post(server, await offer_of(ghost.pc))  # answered, and the answer never applied: no ICE, no DTLS
    assert r.status_code == 201, r.text
    t0 = time.monotonic()
    assert used(server) == 1 and webrtc_active(server) == 1
    bystander = peers()  # a session alongside, connected meanwhile
    bystander.speech = say("How is the weather today", 48_000)
    assert (await bystander.call(server.base, session=SESSION)).status_code == 201
    await bystander.until(lambda e: e["type"] == "session.created", 10)
    await wait_used(server, 1, within=FREED_WITHIN_S)  # the ghost's slot is back, the bystander's kept
    freed = time.monotonic() - t0
    assert PEER_TIMEOUT_S - 0.5 < freed < FREED_WITHIN_S, freed
    assert len(ends(server, "never connected")) >= 1
    assert webrtc_active(server) == 1
    await bystander_turn(bystander)
    await bystander.close()
    await wait_used(server, 0, within=2)
    assert webrtc_active(server) == 0


async def bystander_turn(c: Client) -> dict:
    """A spoken turn, answered with no error: the session alongside is unaffected."""
    first = len(c.events)
    c.mic.say(np.concatenate([silence(0.2), c.speech, silence(0.8)]))
    done = await c.until(lambda e: e["type"] == "response.done", 60, first)
    assert done["response"]["status"] in ("completed", "incomplete"), done
    assert "error" not in c.types()[first:], [e for e in c.events[first:] if e["type"] == "error"]
    return done


async def test_a_peer_that_stops_sending_mid_turn(server, peers, say):
    speech = say("How is the weather today in the city", 48_000)
    stalled, bystander = peers(), peers()
    bystander.speech = speech
    for c in (stalled, bystander):
        assert (await c.call(server.base, session=SESSION)).status_code == 201
        await c.until(lambda e: e["type"] == "session.created", 10)
    closed = asyncio.Event()
    stalled.pc.on("connectionstatechange",
                  lambda: closed.set() if stalled.pc.connectionState in ("closed", "failed") else None)
    stalled.mic.say(np.concatenate([silence(0.2), speech]))
    await stalled.until(lambda e: e["type"] == "input_audio_buffer.speech_started", 10)
    stalled.pc.getSenders()[0].replaceTrack(None)  # mid-speech: no more RTP; ICE, DTLS and the channel stay up
    t0 = time.monotonic()
    turn = asyncio.create_task(bystander_turn(bystander))  # the other session talks through the teardown
    await wait_used(server, 1, within=FREED_WITHIN_S)
    freed = time.monotonic() - t0
    assert PEER_TIMEOUT_S - 0.5 < freed < FREED_WITHIN_S, freed
    await asyncio.wait_for(closed.wait(), 5)  # the server closed the peer connection: a clean teardown
    assert "response.created" not in stalled.types()  # its half-spoken turn was never committed
    assert len(ends(server, "peer stopped sending audio")) == 1
    await turn
    assert used(server) == 1 and webrtc_active(server) == 1  # the bystander is still there
    await bystander.close()
    await wait_used(server, 0, within=2)
