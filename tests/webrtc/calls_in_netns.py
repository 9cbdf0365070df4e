"""WebRTC calls against a real server, inside a private network namespace that has only `lo`.

Not collected on its own (the name does not match test_*.py): test_calls.py runs this file under `unshare -n`,
so that every ICE candidate, STUN check and RTP packet stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aioice.ice
import httpx
import numpy as np
import pytest
from aiortc import RTCRtpSender
from aiortc.sdp import SessionDescription
from openai import AsyncOpenAI

from tests.server.harness import ServerProcess
from tests.webrtc.client import Client

pytestmark = pytest.mark.slow
TURN = {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 200}
LOOPBACK = ["--webrtc-host-addresses", "127.0.0.1"]  # aioice skips loopback addresses unless told
KEY = "sk-test-key"
SILENT, LOUD = 1e-3, 0.01  # RMS of a decoded 20 ms frame


@pytest.fixture(scope="module", autouse=True)
def _lo_only():
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        pytest.fail(f"run through test_calls.py: this file needs a network namespace with only lo, not {names}")


@pytest.fixture(autouse=True)
def _client_candidates(monkeypatch):
    # the client side of the same rule: aioice skips 127.0.0.1, and lo is all there is here
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"), args=LOOPBACK) as srv:
        yield srv


@pytest.fixture
async def clients():
    made: list[Client] = []

    def make(**kw) -> Client:
        made.append(Client(**kw))
        return made[-1]

    yield make
    for c in made:
        await c.close()
    assert not [bad for c in made for bad in c.invalid]  # every event on the channel parsed as the SDK's


def used(server) -> int:
    return httpx.get(server.base + "/readyz", timeout=5).json()["slots"]["used"]


async def wait_used(server, n: int, within: float) -> float:
    """Seconds until /readyz shows n slots used; fails after `within`."""
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            if (await http.get(server.base + "/readyz")).json()["slots"]["used"] == n:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < within, f"slots used did not reach {n} within {within} s"
            await asyncio.sleep(0.02)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(48_000 * seconds), np.float32)


LIFECYCLE = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "response.created", "response.output_item.added", "response.content_part.added",
             "output_audio_buffer.started", "response.output_audio.done", "response.output_audio_transcript.done",
             "response.content_part.done", "response.output_item.done", "response.done", "output_audio_buffer.stopped"]


async def ws_turn_types(server, speech24: np.ndarray, max_tokens: int) -> set[str]:
    """The event types of the same kind of turn over the WebSocket transport."""
    import base64

    from streaming.audio import float_to_pcm16

    audio = float_to_pcm16(np.concatenate([np.zeros(4800, np.float32), speech24, np.zeros(24000, np.float32)]))
    client = AsyncOpenAI(api_key="anything", base_url=server.base + "/v1", websocket_base_url=server.ws)
    types: list[str] = []
    async with client.realtime.connect(model="lfm-audio") as conn:
        await conn.session.update(session={"type": "realtime", "max_output_tokens": max_tokens,
                                           "audio": {"input": {"turn_detection": TURN}}})
        data = audio.tobytes()
        for i in range(0, len(data), 1920):
            await conn.input_audio_buffer.append(audio=base64.b64encode(data[i:i + 1920]).decode())
        async for event in conn:
            types.append(event.type)
            if event.type == "response.done":
                break
    return set(types)


async def test_spoken_turn(server, clients, say):
    speech = say("How is the weather today", 48_000)
    c = clients()
    answer = await c.call(server.base, session={"type": "realtime", "max_output_tokens": 40,
                                                "audio": {"input": {"turn_detection": TURN}}})
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"].startswith("application/sdp")
    call_id = answer.headers["location"].rsplit("/", 1)[1]
    assert answer.headers["location"] == f"/v1/realtime/calls/{call_id}" and call_id.startswith("rtc_")
    # Opus only, although the client also offered PCMU and PCMA: both directions use it
    offered = {c.mimeType for c in RTCRtpSender.getCapabilities("audio").codecs}
    assert {"audio/PCMU", "audio/PCMA"} <= offered
    audio_section = next(m for m in SessionDescription.parse(answer.text).media if m.kind == "audio")
    assert {codec.mimeType.lower() for codec in audio_section.rtp.codecs} == {"audio/opus"}
    candidates = [cand.ip for m in SessionDescription.parse(answer.text).media for cand in m.ice_candidates]
    assert candidates and set(candidates) == {"127.0.0.1"}  # gathered before answering (no trickle)

    created = await c.until(lambda e: e["type"] == "session.created", 10)
    assert created["session"]["max_output_tokens"] == 40  # the multipart session part was applied
    assert c.types()[0] == "session.created"  # sent before the channel opened, buffered until it did
    c.send({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 30}})
    updated = await c.until(lambda e: e["type"] == "session.updated", 10)
    assert updated["session"]["max_output_tokens"] == 30  # client events travel on the channel too
    c.mic.say(np.concatenate([silence(0.3), speech, silence(1.0)]))
    done = await c.until(lambda e: e["type"] == "response.done", 60)
    stopped = await c.until(lambda e: e["type"] == "output_audio_buffer.stopped", 30)
    types = c.types()
    positions = [types.index(t) for t in LIFECYCLE]
    assert positions == sorted(positions), types
    # random weights may or may not produce text; either way the deltas add up to the transcript
    transcript = next(e for e in c.events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert "".join(e["delta"] for e in c.events if e["type"] == "response.output_audio_transcript.delta") == transcript
    assert "response.output_audio.delta" not in types  # on WebRTC the audio goes to the track
    rid = done["response"]["id"]
    started = next(e for e in c.events if e["type"] == "output_audio_buffer.started")
    assert started["response_id"] == stopped["response_id"] == rid
    assert types.count("output_audio_buffer.started") == types.count("response.created") == 1  # one turn
    assert done["response"]["status"] == "incomplete"  # random weights: max_output_tokens ends it

    # The track played the whole response in real time: stopped comes once the audio is out, not at response.done
    # (which comes as soon as the model is done, faster than real time), and not much later either.
    frames = done["response"]["usage"]["output_token_details"]["audio_tokens"]
    seconds = frames * 0.08
    t_started, t_stopped, t_done = c.time_of(started), c.time_of(stopped), c.time_of(done)
    assert frames > 0 and t_stopped - t_started > seconds - 0.15, (seconds, t_stopped - t_started)
    assert t_stopped < max(t_started + seconds, t_done) + 0.5, (seconds, t_stopped - t_started, t_done - t_started)
    # What the client heard: Opus decoded at 48 kHz, silence before, the model's (noisy) speech while it played.
    assert {rate for _, _, rate in c.audio} == {48_000}
    before = c.rms_between(0, t_started - 0.1)
    during = c.rms_between(t_started + 0.1, t_stopped - 0.1)
    assert len(before) > 10 and before.max() < SILENT
    assert len(during) > 0.5 * (seconds - 0.2) / 0.02 and np.median(during) > LOUD, np.median(during)

    # The same kind of turn over the WebSocket carries the same event types, audio aside (and text deltas,
    # which random weights produce or not).
    ws = await ws_turn_types(server, say("How is the weather today", 24_000), 30)
    webrtc = set(types[:types.index("response.done") + 1])
    text = {"response.output_audio_transcript.delta"}
    assert ws - text - {"response.output_audio.delta"} == webrtc - text - {"output_audio_buffer.started"}
    assert "response.output_audio.delta" in ws


async def test_barge_in_clears_the_track(server, clients, say):
    c = clients()
    answer = await c.call(server.base, session={"type": "realtime", "max_output_tokens": 400,
                                                "audio": {"input": {"turn_detection": TURN}}})
    assert answer.status_code == 201, answer.text
    await c.until(lambda e: e["type"] == "session.created", 10)
    c.mic.say(np.concatenate([silence(0.2), say("Tell me a long story about the sea", 48_000), silence(0.6)]))
    started = await c.until(lambda e: e["type"] == "output_audio_buffer.started", 60)
    await asyncio.sleep(0.3)
    first = len(c.events)
    c.mic.say(say("Stop wait a moment please", 48_000))  # the user talks over the response
    cleared = await c.until(lambda e: e["type"] == "output_audio_buffer.cleared", 10, first)
    done = await c.until(lambda e: e["type"] == "response.done" and e["response"]["id"] == started["response_id"],
                         10)
    assert cleared["response_id"] == started["response_id"]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    await c.until(lambda e: e["type"] == "input_audio_buffer.speech_stopped", 10, c.events.index(cleared))
    after = c.types()[c.events.index(cleared):]
    assert "output_audio_buffer.stopped" not in after[:after.index("input_audio_buffer.speech_stopped")]
    # the queued audio stopped at once: the user is still talking, so nothing new plays yet
    t = c.time_of(cleared)
    heard = c.rms_between(t - 0.3, t - 0.1)
    quiet = c.rms_between(t + 0.15, t + 0.6)
    assert np.median(heard) > LOUD and len(quiet) > 15 and quiet.max() < SILENT, (np.median(heard), quiet.max())


async def test_closing_the_client_frees_the_slot(server, clients):
    c = clients()
    answer = await c.call(server.base)  # plain application/sdp
    assert answer.status_code == 201, answer.text
    await c.until(lambda e: e["type"] == "session.created", 10)
    assert used(server) == 1
    created = c.events[0]
    await c.close()
    assert await wait_used(server, 0, within=1.0) < 1.0
    end = next(e for e in server.log_events("session_end") if e["transport"] == "webrtc" and
               e["session"] == created["session"]["id"])
    assert end["reason"] in ("data channel closed", "connection closed")


async def test_admission_auth_and_shutdown(tiny_dir, tmp_path, clients):
    """API keys required and one slot: refusals cost nothing; at shutdown the server closes the peer."""
    with ServerProcess(tiny_dir, tmp_path, env={"LFM_AUDIO_API_KEYS": KEY},
                       args=[*LOOPBACK, "--max-sessions", "1"]) as keyed:
        first = await _admission_and_auth(keyed, clients)
        closed = asyncio.Event()
        first.pc.on("connectionstatechange", lambda: closed.set() if first.pc.connectionState == "closed" else None)
    await asyncio.wait_for(closed.wait(), 5)  # the server closed the peer on its way out
    end = keyed.log_events("session_end")
    assert [e["reason"] for e in end] == ["server shutting down"] and end[0]["transport"] == "webrtc"


async def _admission_and_auth(keyed, clients) -> Client:
    c = clients()
    refused = await c.call(keyed.base)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert used(keyed) == 0
    wrong = await clients().call(keyed.base, token="sk-wrong")
    assert wrong.status_code == 401 and used(keyed) == 0

    async with httpx.AsyncClient(timeout=10) as http:
        secret = (await http.post(keyed.base + "/v1/realtime/client_secrets",
                                  headers={"Authorization": f"Bearer {KEY}"},
                                  json={"session": {"type": "realtime", "max_output_tokens": 7}})).json()
    first = clients()
    ok = await first.call(keyed.base, token=secret["value"])  # an ephemeral client secret as the Bearer token
    assert ok.status_code == 201, ok.text
    created = await first.until(lambda e: e["type"] == "session.created", 10)
    assert created["session"]["max_output_tokens"] == 7  # the secret's session config
    assert used(keyed) == 1

    full = await clients().call(keyed.base, token=KEY)  # the only slot is taken
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert full.json()["error"]["code"] == "server_full"
    assert used(keyed) == 1
    return first


async def test_bad_offers_take_no_slot(server, clients):
    async with httpx.AsyncClient(timeout=10) as http:
        wrong_type = await http.post(server.base + "/v1/realtime/calls", json={"sdp": "v=0"})
        garbage = await http.post(server.base + "/v1/realtime/calls", content="v=0\r\nnonsense",
                                  headers={"Content-Type": "application/sdp"})
        no_sdp = await http.post(server.base + "/v1/realtime/calls", files={"session": (None, "{}")})
    for r in (wrong_type, garbage, no_sdp):
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_offer", r.text

    pcmu = clients()  # an offer without Opus
    for t in pcmu.pc.getTransceivers():
        t.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"])
    r = await pcmu.call(server.base)
    assert r.status_code == 400 and "Opus" in r.json()["error"]["message"]

    r = await clients(channel=None).call(server.base)  # audio only
    assert r.status_code == 400 and "oai-events" in r.json()["error"]["message"]

    bad_session = await clients().call(server.base, session={"type": "realtime", "output_modalities": ["video"]})
    assert bad_session.status_code == 400 and bad_session.json()["error"]["code"] == "invalid_value"
    assert used(server) == 0
