"""Speculative start against one real server (the real tiny model, uvicorn, a WebSocket): the response is prepared
in the silence, yet no event of the turn reaches the client before `input_audio_buffer.committed`; speech that
resumes in the pause drops the speculation and the turn goes on as one. The audio after the speech is paced in
real time, so that the engine has the silence to work in, as with a live microphone."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import websockets
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from models.defaults import SPECULATION_PAD_MS
from server.metrics import Metrics
from server.session_config import session_object, session_update
from streaming.audio import float_to_pcm16
from streaming.messages import EngineStats
from streaming.session_types import SessionConfig
from tests.server.harness import ServerProcess

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
CHUNK_MS = 40
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv")) as srv:
        yield srv


def _counts(server) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(server.metrics()):
        for s in family.samples:
            if s.name.startswith("lfm_audio_speculative_"):
                out[s.name] = s.value
    return out


class Conn:
    def __init__(self, ws) -> None:
        self.ws, self.events = ws, []

    async def send(self, event: dict) -> None:
        await self.ws.send(json.dumps(event))

    async def read(self) -> None:
        async for raw in self.ws:
            event = json.loads(raw)
            SERVER_EVENT.validate_python(event)
            self.events.append((time.perf_counter(), event))

    async def until(self, kind: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, e in self.events:
                if e["type"] == kind:
                    return e
            await asyncio.sleep(0.01)
        raise TimeoutError(kind)

    async def audio(self, x: np.ndarray, paced: bool) -> None:
        pcm = float_to_pcm16(x).tobytes()
        step = 24 * 2 * CHUNK_MS
        for i in range(0, len(pcm), step):
            await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i:i + step]).decode()})
            if paced:
                await asyncio.sleep(CHUNK_MS / 1000)


async def _turn(server, say, pieces: list[tuple[str | int, bool]], turn_detection: dict) -> list[dict]:
    """One session: `pieces` of speech (text) or silence (ms), each sent in a burst or paced; then the response."""
    async with websockets.connect(server.ws + "/realtime?model=lfm-audio", max_size=None) as ws:
        conn = Conn(ws)
        reader = asyncio.create_task(conn.read())
        await conn.until("session.created")
        await conn.send({"type": "session.update", "session": {
            "type": "realtime", "max_output_tokens": 30, "lfm_audio": {"speculative_start": True},
            "audio": {"input": {"turn_detection": turn_detection}}}})
        updated = await conn.until("session.updated")
        assert updated["session"]["lfm_audio"]["speculative_start"] is True
        assert updated["session"]["lfm_audio"]["speculation_pad_ms"] == SPECULATION_PAD_MS
        for piece, paced in pieces:
            x = np.zeros(24 * piece, np.float32) if isinstance(piece, int) else say(piece, 24000)
            await conn.audio(x, paced)
        await conn.until("response.done", 120)
        reader.cancel()
    return [e for _, e in conn.events]


def _check_nothing_before_commit(events: list[dict]) -> None:
    types = [e["type"] for e in events]
    committed = types.index("input_audio_buffer.committed")
    early = [t for t in types[:committed] if t.startswith(("response.", "conversation.item."))]
    assert not early, types
    after = types[committed:]
    order = ["input_audio_buffer.committed", "conversation.item.added", "response.created",
             "response.output_audio.delta", "response.done"]
    assert [after.index(t) for t in order] == sorted(after.index(t) for t in order), after


async def test_held_until_the_commit_then_out_at_once(server, say):
    before = _counts(server)
    events = await _turn(server, say, [(300, False), ("What is the weather like today?", False), (900, True)],
                         {"type": "server_vad", "silence_duration_ms": 500})
    _check_nothing_before_commit(events)
    after = _counts(server)
    assert after["lfm_audio_speculative_hits_total"] == before.get("lfm_audio_speculative_hits_total", 0) + 1
    assert after["lfm_audio_speculative_time_saved_seconds_sum"] > before.get(
        "lfm_audio_speculative_time_saved_seconds_sum", 0)
    done = next(e for e in events if e["type"] == "response.done")
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    frames = done["response"]["usage"]["output_token_details"]["audio_tokens"]
    assert frames > 0 and len(audio) == frames * 1920 * 2  # every frame that was held reached the client
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    item = next(e["item"] for e in events if e["type"] == "conversation.item.added")
    assert item["id"] == committed["item_id"] and item["role"] == "user"


async def test_speech_in_the_pause_drops_it_and_the_turn_goes_on(server, say):
    before = _counts(server)
    events = await _turn(server, say, [(300, False), ("I would like", False), (350, True),
                                       ("a cup of tea please.", False), (900, True)],
                         {"type": "server_vad", "silence_duration_ms": 500})
    _check_nothing_before_commit(events)
    assert [e["type"] for e in events].count("input_audio_buffer.committed") == 1
    after = _counts(server)
    assert after["lfm_audio_speculative_drops_total"] >= before.get("lfm_audio_speculative_drops_total", 0) + 1


def test_metrics_fold_in_the_engine_counts():
    m = Metrics({})
    m.update_from(EngineStats(speculative_starts=3, speculative_hits=2, speculative_drops=1,
                              speculative_saved_seconds=[0.04, 0.06]))
    m.update_from(EngineStats(speculative_starts=4, speculative_hits=2, speculative_drops=2))
    body = m.render()[0].decode()
    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert values["lfm_audio_speculative_starts_total"] == 4 and values["lfm_audio_speculative_drops_total"] == 2
    assert values["lfm_audio_speculative_hits_total"] == 2
    assert values["lfm_audio_speculative_time_saved_seconds_count"] == 2
    assert values["lfm_audio_speculative_time_saved_seconds_sum"] == pytest.approx(0.1)


def test_the_session_field_takes_true_false_or_null_and_is_echoed():
    config, errors = session_update(SessionConfig(), {"lfm_audio": {"speculative_start": False}})
    assert not errors and config.speculative_start is False
    config, errors = session_update(config, {"lfm_audio": {"speculative_start": None}})
    assert not errors and config.speculative_start is None  # the server's default again
    config, errors = session_update(config, {"lfm_audio": {"speculative_start": "yes", "seed": 3}})
    assert [e.param for e in errors] == ["session.lfm_audio.speculative_start"] and config.seed == 3
    ext = session_object(config, "sess_x", "m", speculative=False)["lfm_audio"]
    assert ext["speculative_start"] is False and ext["speculation_pad_ms"] is None
