"""Auth (API keys, client secrets) and the REST endpoints, through the official `openai` SDK where it applies."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import wave

import httpx
import openai
import pytest
import websockets
from openai import AsyncOpenAI

from streaming.audio import write_wav
from tests.server.harness import ServerProcess

KEY = "sk-test-0123456789"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"), env={"LFM_AUDIO_API_KEYS": KEY}) as srv:
        yield srv


@contextlib.asynccontextmanager
async def _client(server, key: str = KEY):
    async with AsyncOpenAI(api_key=key, base_url=server.base + "/v1", websocket_base_url=server.ws) as client:
        yield client


async def _ws(server, headers: dict | None = None, subprotocols: list[str] | None = None) -> tuple[dict, int | None]:
    """Connect raw, return (first event, close code)."""
    async with websockets.connect(server.ws + "/realtime", additional_headers=headers or {},
                                  subprotocols=subprotocols) as ws:
        first = json.loads(await ws.recv())
        try:
            await asyncio.wait_for(ws.recv(), 2)
        except websockets.ConnectionClosed as e:
            return first, e.rcvd.code if e.rcvd else None
        except TimeoutError:
            return first, None
    return first, None


def _slots_used(server) -> int:
    return httpx.get(server.base + "/readyz").json()["slots"]["used"]


def _rejected(server) -> float:
    return sum(float(line.split()[-1]) for line in server.metrics().splitlines()
               if line.startswith('lfm_audio_rejected_sessions_total{reason="auth"}'))


async def test_refused_before_a_slot_is_taken(server):
    before = _rejected(server)
    for headers, protocols in [(None, None), ({"Authorization": "Bearer wrong"}, None),
                               (None, ["realtime", "openai-insecure-api-key.wrong"]),
                               ({"Authorization": "Bearer ek_forged.secret"}, None)]:
        event, code = await _ws(server, headers, protocols)
        assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key", event
        assert code == 1008
        assert _slots_used(server) == 0
    assert _rejected(server) == before + 4


async def test_api_key_and_single_use_client_secret(server):
    event, code = await _ws(server, {"Authorization": f"Bearer {KEY}"})
    assert event["type"] == "session.created" and code is None

    async with _client(server) as client:
        secret = await client.realtime.client_secrets.create(
            session={"type": "realtime", "instructions": "Respond with interleaved text and audio."})
    assert secret.value.startswith("ek_") and secret.expires_at > time.time()
    event, code = await _ws(server, subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"])
    assert event["type"] == "session.created" and code is None
    event, code = await _ws(server, subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"])
    assert event["error"]["code"] == "invalid_api_key" and "already used" in event["error"]["message"]
    # a client secret cannot mint more secrets
    async with _client(server, secret.value) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.realtime.client_secrets.create()


async def test_expired_client_secret_is_refused(server):
    async with _client(server) as client:
        secret = await client.realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 10})
    await asyncio.sleep(11)
    event, code = await _ws(server, {"Authorization": f"Bearer {secret.value}"})
    assert event["error"]["code"] == "invalid_api_key" and "expired" in event["error"]["message"]
    assert code == 1008 and _slots_used(server) == 0


async def test_rest_endpoints_through_the_sdk(server, say, tmp_path):
    async with _client(server) as client:
        await _rest_calls(client, say, tmp_path)
    async with _client(server, "wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    assert _slots_used(server) == 0


async def _rest_calls(client: AsyncOpenAI, say, tmp_path) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["tiny"]

    speech = await client.audio.speech.create(model="lfm-audio", voice="alloy", input="Hello there!",
                                              response_format="wav")
    data = speech.read()
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
    async with client.audio.speech.with_streaming_response.create(
            model="lfm-audio", voice="sage", input="Streaming.", response_format="pcm") as response:
        assert response.headers["content-type"] == "audio/pcm"
        chunks = [c async for c in response.iter_bytes()]
    assert sum(map(len, chunks)) % 2 == 0  # 16-bit samples (how many: up to the random model)

    path = tmp_path / "q.wav"
    write_wav(path, say("What time is it?", 16000), 16000)
    with open(path, "rb") as f:
        text = await client.audio.transcriptions.create(model="lfm-audio", file=f)
    assert isinstance(text.text, str)

    with pytest.raises(openai.BadRequestError):
        await client.audio.speech.create(model="lfm-audio", voice="alloy", input="x", response_format="mp3")
