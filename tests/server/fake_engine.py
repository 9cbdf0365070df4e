"""The server in this process on a scripted engine: the real `Engine` (slots, scheduler, responses, the
session's EngineSession and Conversation) on tests/streaming/fakes.py's FakeRunner, so every response says a
known text and plays a known tone, in milliseconds. `served()` runs the app through Starlette's TestClient
(which runs the lifespan: warm-up included); `Realtime` speaks the protocol over its WebSocket and validates
every server event against the SDK's `RealtimeServerEvent`."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import numpy as np
from fastapi.testclient import TestClient
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from models.checkpoint import Checkpoint
from server.app import AppState, Loaded, create_app
from server.settings import Settings
from streaming.audio import AudioFormat, OutputEncoder, float_to_pcm16
from streaming.engine import Engine, EngineConfig
from tests.streaming.fakes import FakeRunner, Reply

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
KEY = "sk-fake-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SAID = "Hello from the scripted engine."  # what every response says
FRAMES = 24  # ... and how many frames of speech it plays


def reply(ckpt: Checkpoint, text: str = SAID, frames: int | None = FRAMES) -> Reply:
    return Reply(tuple(ckpt.tokenizer.encode(text)), frames)


@dataclass
class Served:
    client: TestClient
    runner: FakeRunner
    state: AppState

    def metric(self, name: str, **labels: str) -> float:
        families = text_string_to_metric_families(self.client.get("/metrics", headers=AUTH).text)
        return sum(s.value for f in families for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def slots_used(self) -> int:
        return self.client.get("/readyz").json()["slots"]["used"]


@contextlib.contextmanager
def served(ckpt: Checkpoint, runner: FakeRunner | None = None, **settings: object) -> Iterator[Served]:
    """The app on a scripted engine; `settings` override the Settings (an API key is set by default)."""
    runner = runner or FakeRunner(reply=reply(ckpt), keep_plans=False)
    config = Settings(**{"api_keys": [KEY], "max_sessions": 3, "max_context": 1024, **settings})

    def load(s: Settings) -> Loaded:
        engine = Engine(ckpt, EngineConfig(max_sessions=s.max_sessions, max_context=s.max_context,
                                           prefill_budget=s.prefill_budget), runner=runner)
        return Loaded(engine, ckpt.directory.name, runner.decoder_name)

    app = create_app(config, load=load)
    with TestClient(app) as client:
        yield Served(client, runner, app.state.lfm)


async def _receive(stream, timeout: float):
    with anyio.fail_after(timeout):
        return await stream.receive()


class Realtime:
    """One Realtime WebSocket through the TestClient. Every event received is validated and kept (`events`)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []

    def receive(self, timeout: float = 30) -> dict:
        # TestClient's own receive waits forever: a missing event must fail the test, not hang it.
        message = self.ws.portal.call(_receive, self.ws._send_rx, timeout)
        self.ws._raise_on_close(message)  # WebSocketDisconnect with the close code
        event = json.loads(message["text"])
        SERVER_EVENT.validate_python(event)
        self.events.append(event)
        return event

    def until(self, kind: str, timeout: float = 30, **match: object) -> dict:
        while True:
            event = self.receive(timeout)
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event

    def seen(self, kind: str, **match: object) -> dict:
        """An event already received, or the next one to come."""
        for event in self.events:
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event
        return self.until(kind, **match)

    def send(self, event: dict | str | bytes) -> None:
        if isinstance(event, bytes):
            self.ws.send_bytes(event)
        else:
            self.ws.send_text(json.dumps(event) if isinstance(event, dict) else event)

    def update(self, **session: object) -> dict:
        self.send({"type": "session.update", "session": {"type": "realtime", **session}})
        return self.until("session.updated")

    def append(self, pcm24: np.ndarray, chunk_ms: int = 40, fmt: AudioFormat | None = None) -> None:
        data = float_to_pcm16(pcm24).tobytes() if fmt is None else OutputEncoder(fmt).encode(pcm24)
        step = max(1, len(data) * chunk_ms // max(1, round(1000 * len(pcm24) / 24000)))
        for i in range(0, len(data), step):
            self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(data[i:i + step]).decode()})

    def say(self, text: str, **response: object) -> dict:
        """A user text item and a response to it; returns its response.done."""
        self.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        self.send({"type": "response.create", **({"response": response} if response else {})})
        return self.until("response.done")

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str, **match: object) -> list[dict]:
        return [e for e in self.events if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]

    def audio(self, response_id: str) -> bytes:
        return b"".join(base64.b64decode(e["delta"]) for e in self.of("response.output_audio.delta",
                                                                      response_id=response_id))


@contextlib.contextmanager
def realtime(client: TestClient, headers: dict | None = None, subprotocols: list[str] | None = None,
             query: str = "") -> Iterator[Realtime]:
    """A connected session, its session.created already read (see `events[0]`)."""
    with client.websocket_connect("/v1/realtime" + query, headers=AUTH if headers is None else headers,
                                  subprotocols=subprotocols) as ws:
        rt = Realtime(ws)
        rt.until("session.created")
        yield rt
