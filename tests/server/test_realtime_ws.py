"""The Realtime API over WebSocket against a real server, driven by the official `openai` SDK."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from streaming.audio import float_to_pcm16
from tests.server.harness import ServerProcess

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
TURN = {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 200}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv")) as srv:
        yield srv


@contextlib.asynccontextmanager
async def _connect(server):
    async with (AsyncOpenAI(api_key="anything", base_url=server.base + "/v1", websocket_base_url=server.ws) as client,
                client.realtime.connect(model="lfm-audio") as conn):
        yield conn


class Recorder:
    """Reads raw events, validates each against the SDK's RealtimeServerEvent schema, keeps them."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.events: list[dict] = []

    async def until(self, predicate, timeout: float = 60.0) -> dict:
        async def read() -> dict:
            while True:
                event = json.loads(await self.conn.recv_bytes())
                SERVER_EVENT.validate_python(event)  # every event we send must parse
                self.events.append(event)
                if predicate(event):
                    return event

        return await asyncio.wait_for(read(), timeout)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


def pcm24(x: np.ndarray) -> bytes:
    return float_to_pcm16(x).tobytes()


async def _append(conn, audio: bytes, chunk_ms: int = 40) -> None:
    step = 24 * 2 * chunk_ms
    for i in range(0, len(audio), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + step]).decode())


async def test_spoken_turn_with_server_vad(server, say):
    speech = say("Hello there. What is the weather like today?", 24000)
    audio = pcm24(np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(24000, np.float32)]))
    async with _connect(server) as conn:
        rec = Recorder(conn)
        created = await rec.until(lambda e: e["type"] == "session.created")
        assert created["session"]["type"] == "realtime"
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 40,
                                           "audio": {"input": {"turn_detection": TURN}}})
        await rec.until(lambda e: e["type"] == "session.updated")
        await _append(conn, audio)
        done = await rec.until(lambda e: e["type"] == "response.done", 120)
    types = rec.types()
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "response.created", "response.output_item.added",
             "response.content_part.added", "response.output_audio.delta", "response.output_audio.done",
             "response.output_audio_transcript.done", "response.content_part.done", "response.output_item.done",
             "response.done"]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions), types
    assert "response.output_audio_transcript.delta" in types
    started = next(e for e in rec.events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in rec.events if e["type"] == "input_audio_buffer.speech_stopped")
    speech_ms = 1000 * len(speech) / 24000
    assert 100 <= started["audio_start_ms"] <= 400
    assert speech_ms * 0.8 < stopped["audio_end_ms"] - started["audio_start_ms"] < speech_ms + 1000
    audio_out = b"".join(base64.b64decode(e["delta"]) for e in rec.events
                         if e["type"] == "response.output_audio.delta")
    assert done["response"]["status"] == "incomplete"  # random weights never end a turn: max tokens
    frames = done["response"]["usage"]["output_token_details"]["audio_tokens"]
    assert frames > 0 and len(audio_out) == frames * 1920 * 2
    assert np.abs(np.frombuffer(audio_out, "<i2")).max() > 0


async def test_push_to_talk_and_text_turns(server, say):
    speech = pcm24(say("Push to talk works too.", 24000))
    async with _connect(server) as conn:
        rec = Recorder(conn)
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 30,
                                           "audio": {"input": {"turn_detection": None}}})
        await rec.until(lambda e: e["type"] == "session.updated")
        await _append(conn, speech)
        await conn.input_audio_buffer.commit()
        committed = await rec.until(lambda e: e["type"] == "input_audio_buffer.committed")
        await conn.response.create()
        first = await rec.until(lambda e: e["type"] == "response.done", 120)
        assert "input_audio_buffer.speech_started" not in rec.types()  # manual turns: no VAD

        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "And in text?"}]})
        added = await rec.until(lambda e: e["type"] == "conversation.item.added" and e["item"]["role"] == "user")
        await conn.response.create(response={"output_modalities": ["text"]})
        second = await rec.until(lambda e: e["type"] == "response.done", 120)
    assert added["previous_item_id"] == first["response"]["output"][0]["id"]
    assert committed["item_id"] != added["item"]["id"]
    assert second["response"]["output_modalities"] == ["text"]
    types = rec.types()
    last = len(types) - 1 - types[::-1].index("response.created")
    assert "response.output_text.delta" in types[last:] and "response.output_audio.delta" not in types[last:]
    # the second turn reused the first one's cached state
    assert second["response"]["usage"]["input_token_details"]["cached_tokens"] > 0
