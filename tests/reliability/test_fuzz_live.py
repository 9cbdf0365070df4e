"""The Realtime fuzzer against a real server: `lfm-audio serve` in a subprocess on the tiny checkpoint, real
WebSockets over loopback. The in-process fuzzer (tests/server/test_fuzz.py) explores the event handling; this
one sends its kinds of traffic through uvicorn's framing and the real engine, with sequences aimed at the
engine's state (a response running, its item deleted or truncated under it, cancels, commits and updates
while it runs). After each sequence the same session answers a probe and completes a turn; no error is a
`server_error`; every server event parses as the SDK's type; the server's log holds no traceback.

Frames the WebSocket layer itself refuses end the connection with a documented close: a text frame that is
not UTF-8 (1007) and a frame over the size limit (1009); the server then goes on serving."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from server.settings import Settings
from tests.reliability.conftest import LIVE_KEY
from tests.server.fake_engine import SERVER_EVENT
from tests.server.harness import ServerProcess
from tests.server.test_fuzz import Built, _completes_a_turn, _until_probe, events, raw_frames

KEY = LIVE_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
DEFAULT_EXAMPLES = 90  # sequences per run (about 1,900 events, 18 s here)
EXAMPLES = int(os.environ.get("FUZZ_LIVE_EXAMPLES", DEFAULT_EXAMPLES))  # more for a longer hunt
MIN_EVENTS = 2000  # a bounded run: the in-process fuzzer sends the 10,000
BURST = 1000
TOTAL_S = 30.0  # the default run's bound on this 2-core machine (measured ~18 s); scaled for a longer hunt
WAIT_S = 0.05  # a "wait" step's longest wait for a response to start
RESPONSE_TOKENS = 80  # a fuzzed response's length: long enough to be hit while it runs (tens of ms here)
SPEECH = base64.b64encode(bytes(range(256)) * 8).decode()  # 43 ms of loud pcm16: something to truncate

# Steps aimed at the engine's state, resolved when sent (the item of the running response is known by then).
MID_RESPONSE = ("cancel", "cancel", "commit", "truncate_running", "delete_running", "retrieve_running",
                "update_running", "respond", "append", "clear", "output_clear", "say", "wait")
STEPS = ("running", "truncate_unknown", *MID_RESPONSE)
seen: collections.Counter[str] = collections.Counter()  # server events by type, errors by code, responses by status
# a response under way, then what hits it: the sequences in any order the issue names, and more
scenario = st.lists(st.sampled_from(MID_RESPONSE), min_size=1, max_size=5).map(lambda steps: ("running", *steps))
frames = st.lists(st.one_of(events(), events(), raw_frames, st.sampled_from(STEPS), scenario),
                  min_size=8, max_size=40).map(lambda parts: [one for part in parts for one in
                                                              (part if isinstance(part, tuple) else [part])])


class Live:
    """One Realtime WebSocket to the real server; every event received is validated against the SDK's type
    and kept. The same interface as tests/server/fake_engine.py's Realtime (send, receive, events)."""

    def __init__(self, server: ServerProcess) -> None:
        self.ws: ClientConnection = connect(server.ws + "/realtime", additional_headers=AUTH, max_size=None,
                                            open_timeout=10)
        self.events: list[dict] = []
        self.seen = seen
        self.running: str | None = None  # the item of the last response started
        self.deleted: set[str] = set()  # items the server said it deleted: never added or done again
        self.finished: set[str] = set()  # responses done: no delta of theirs may follow
        assert self.receive()["type"] == "session.created"

    def receive(self, timeout: float = 30) -> dict:
        event = json.loads(self.ws.recv(timeout))
        SERVER_EVENT.validate_python(event)
        self.events.append(event)
        self.seen[event["type"]] += 1
        if event["type"] == "error":
            self.seen["error:" + event["error"]["code"]] += 1
        elif event["type"] == "response.done":
            self.seen["response:" + event["response"]["status"]] += 1
        kind = event["type"]
        if kind == "response.output_item.added":
            self.running = event["item"]["id"]
        elif kind == "conversation.item.deleted":
            self.deleted.add(event["item_id"])
        elif kind in ("conversation.item.added", "conversation.item.done"):
            assert event["item"]["id"] not in self.deleted, ("a deleted item came back", event)
        elif kind.endswith(".delta") and kind.startswith("response."):
            assert event["response_id"] not in self.finished, ("a delta after its response.done", event)
        elif kind == "response.done":
            self.finished.add(event["response"]["id"])
        return event

    def drain(self) -> None:
        """What has arrived so far, without waiting."""
        while True:
            try:
                self.receive(0)
            except TimeoutError:
                return

    def send(self, frame: dict | str | bytes) -> None:
        if isinstance(frame, bytes):
            self.ws.send(frame)
        else:
            self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    def close(self) -> None:
        self.ws.close()


def _step(rt: Live, step: str, n: int) -> list[dict]:
    """The events one named step sends (none: it only waits)."""
    if step == "running":  # a response under way, for the steps after it to hit
        return [*_step(rt, "say", n), *_step(rt, "respond", n), *_step(rt, "wait", n)]
    rt.drain()
    running = rt.running or "none-yet"
    if step == "wait":  # until a response starts (or a moment passes): the next steps then hit it running
        deadline, before = time.monotonic() + WAIT_S, rt.running
        while rt.running == before and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                rt.receive(0.01)
        return []
    event = {
        "respond": {"type": "response.create", "response": {"max_output_tokens": RESPONSE_TOKENS}},
        "say": {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": f"tell me about {n}"}]}},
        "cancel": {"type": "response.cancel"},
        "commit": {"type": "input_audio_buffer.commit"},
        "truncate_running": {"type": "conversation.item.truncate", "item_id": running, "content_index": 0,
                             "audio_end_ms": n % 300},
        "delete_running": {"type": "conversation.item.delete", "item_id": running},
        "retrieve_running": {"type": "conversation.item.retrieve", "item_id": running},
        "truncate_unknown": {"type": "conversation.item.truncate", "item_id": f"item_{n}", "content_index": 0,
                             "audio_end_ms": 0},
        "update_running": {"type": "session.update", "session": {
            "type": "realtime", "instructions": f"be brief {n}", "max_output_tokens": 1 + n % 30,
            "lfm_audio": {"seed": n, "audio_temperature": 0.5}}},
        "append": {"type": "input_audio_buffer.append", "audio": SPEECH},
        "clear": {"type": "input_audio_buffer.clear"},
        "output_clear": {"type": "output_audio_buffer.clear"},
    }[step]
    return [event]


def _send_all(rt: Live, batch: list, counter: list[int]) -> tuple[set[str], int]:
    """Sends the frames; returns the event ids sent and how many frames carried no string event_id."""
    ids, anonymous = set(), 0
    expanded = (one for frame in batch for one in
                (_step(rt, frame, counter[0]) if isinstance(frame, str) and frame in STEPS else [frame]))
    for frame in expanded:
        counter[0] += 1
        if isinstance(frame, dict) and "event_id" not in frame and counter[0] % 5:
            frame = {**frame, "event_id": f"f{counter[0]}"}
        if isinstance(frame, Built):
            ids.add("huge" if frame.kind == "huge" else "deep")
            rt.send(frame.build())
            continue
        if isinstance(frame, dict) and isinstance(frame.get("event_id"), str):
            ids.add(frame["event_id"])
        else:
            anonymous += 1
        rt.send(frame)
    return ids, anonymous


def _check(rt: Live, ids: set[str], anonymous: int, start: int) -> None:
    """A probe is answered (nothing stuck); no error is the handler's guard; each error answers a frame sent."""
    rt.send({"type": "conversation.item.retrieve", "item_id": "no-such-item", "event_id": "probe"})
    _until_probe(rt)
    errors = [e["error"] for e in rt.events[start:] if e["type"] == "error" and e["error"]["event_id"] != "probe"]
    assert not [e for e in errors if e["type"] == "server_error"], errors
    stray = [e for e in errors if e["event_id"] is not None and e["event_id"] not in ids]
    assert not stray, stray
    if not anonymous:  # (one anonymous session.update may get an error per bad field)
        assert not [e for e in errors if e["event_id"] is None], errors


def _clean_log(server: ServerProcess) -> None:
    log = server.log()
    for wolf in ("Traceback", "Exception in ASGI application", " ERROR "):
        assert wolf not in log, log[log.find(wolf) - 2000:][:4000]
    assert KEY not in log


@pytest.fixture
def server(live_server):
    return live_server


@pytest.mark.slow
def test_fuzzed_traffic_over_real_websockets_gets_errors_and_the_session_goes_on(server):
    counter, started = [0], time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                     HealthCheck.function_scoped_fixture])
    @given(batch=frames)
    def one_sequence(batch):
        rt = Live(server)
        try:
            rt.send({"type": "session.update", "session": {"type": "realtime",
                                                           "audio": {"input": {"turn_detection": None}}}})
            start = len(rt.events)
            ids, anonymous = _send_all(rt, batch, counter)
            _check(rt, ids, anonymous, start)
            _completes_a_turn(rt)
        finally:
            rt.close()

    one_sequence()
    sequences = counter[0]
    rt = Live(server)  # a burst: appends and commits as fast as the socket takes them
    t0 = time.monotonic()
    batch = [{"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(n % 7)).decode()}
             if n % 50 else {"type": "input_audio_buffer.commit"} for n in range(BURST)]
    ids, anonymous = _send_all(rt, batch, counter)
    _check(rt, ids, anonymous, len(rt.events))
    burst_rate = BURST / (time.monotonic() - t0)
    _completes_a_turn(rt)
    rt.close()
    took = time.monotonic() - started
    print(f"\n{sequences} events in {EXAMPLES} sequences, {counter[0]} in all, in {took:.1f} s; the burst "
          f"answered at {burst_rate:.0f} events/s\n{sorted(seen.items())}")
    assert counter[0] >= MIN_EVENTS
    assert took < TOTAL_S * max(1.0, EXAMPLES / DEFAULT_EXAMPLES)
    time.sleep(0.2)  # the last session's end reaches the log
    _clean_log(server)
    assert server.log_events("session_start") and len(server.log_events("session_end")) == len(
        server.log_events("session_start"))


def test_frames_the_websocket_layer_refuses_close_with_their_documented_code(server):
    """Not UTF-8 in a text frame: 1007 (RFC 6455 invalid payload). Over the size limit: 1009. Each only ends
    its own connection, logs no traceback, and the server serves the next session."""
    limit = 2 * Settings.model_fields["max_event_bytes"].default  # uvicorn's ws_max_size (server/cli.py)
    for frame, text, code in ((b"\xff\xfe{}", True, 1007), (b"x" * (limit + 1), True, 1009)):
        rt = Live(server)
        rt.ws.send(frame, text=text)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                rt.receive(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code, closed.value
    rt = Live(server)
    rt.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}})
    _completes_a_turn(rt)
    rt.close()
    time.sleep(0.2)
    _clean_log(server)
    assert "not UTF-8: closed with 1007" in server.log()
