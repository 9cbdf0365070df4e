"""Property-based fuzzing (hypothesis) of the Realtime event handling, in this process on the scripted engine
(tests/server/fake_engine.py): arbitrary JSON, valid events with wrong-typed or out-of-range fields, huge
strings, deep nesting, invalid UTF-8, binary frames, out-of-order sequences and bursts. After each generated
sequence the same session must answer a probe (nothing stuck, nothing closed), no error may be a
`server_error` (the handler's guard: an unexpected exception), an error without an event_id only answers a frame
that carried none, and the session must still complete a turn. One run sends more than `MIN_EVENTS`."""

from __future__ import annotations

import base64
import json
import logging
import os
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.realtime import _CLIENT_EVENTS
from streaming.runner import StepPlan, StepResult
from tests.server.fake_engine import realtime, reply, served
from tests.streaming.fakes import FakeRunner

MIN_EVENTS = 10_000  # the bar for one CI run
# sequences per run (FUZZ_EXAMPLES=N for a longer hunt): about 5,000 events (17 s here), the bursts bring the rest
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 400))
BURST = 1000  # one burst's events (thousands a second through the in-process socket)
ITEM_IDS = ("u1", "u2", "a1", "nope")  # client-chosen ids: later events refer to earlier items by them

sent = {"events": 0}

# ---- strategies
_huge_int = st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
_odd_number = st.one_of(_huge_int, st.floats(allow_nan=True, allow_infinity=True), st.just(10 ** 400),
                        st.just(-1), st.just(0))
_leaf = st.one_of(st.none(), st.booleans(), _huge_int, st.floats(), st.text(max_size=12))
json_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(string.ascii_letters + "_.", max_size=10), inner, max_size=3),
                          max_leaves=8)
weird = st.one_of(json_value, _odd_number, st.text(max_size=40))


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid value, often a wrong-typed or out-of-range one."""
    return st.one_of(valid, valid, weird)


_audio_b64 = st.binary(max_size=4001).map(lambda b: base64.b64encode(b).decode())
_format = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["audio/pcm", "audio/pcmu", "audio/pcma"])},
                                          optional={"rate": _maybe(st.sampled_from([24000, 16000, 8000]))}), weird)
_turn_detection = st.one_of(st.none(), weird, st.fixed_dictionaries({}, optional={
    "type": _maybe(st.sampled_from(["server_vad", "semantic_vad"])),
    "threshold": _maybe(st.floats(0, 1)), "prefix_padding_ms": _maybe(st.integers(0, 2000)),
    "silence_duration_ms": _maybe(st.integers(0, 3000)), "create_response": _maybe(st.booleans()),
    "interrupt_response": _maybe(st.booleans()), "eagerness": _maybe(st.sampled_from(["low", "auto", "high"]))}))
_lfm_audio = st.one_of(weird, st.fixed_dictionaries({}, optional={
    "audio_temperature": _maybe(st.floats(0, 5)), "text_temperature": _maybe(st.floats(0, 5)),
    "audio_top_k": _maybe(st.integers(0, 2049)), "seed": _maybe(st.integers(0, 2 ** 63 - 1))}))
_session = st.fixed_dictionaries({"type": st.sampled_from(["realtime", "realtime", "transcription", "x"])}, optional={
    "instructions": st.one_of(st.text(max_size=50), st.just("word " * 3000), weird),
    "max_output_tokens": _maybe(st.one_of(st.integers(1, 50), st.just("inf"))),
    "output_modalities": _maybe(st.sampled_from([["audio"], ["text"], ["audio", "text"]])),
    "audio": st.one_of(weird, st.fixed_dictionaries({}, optional={
        "input": st.one_of(weird, st.fixed_dictionaries({}, optional={
            "format": _format, "turn_detection": _turn_detection,
            "transcription": st.one_of(st.none(), st.just({"model": "lfm-audio"}), weird)})),
        "output": st.one_of(weird, st.fixed_dictionaries({}, optional={"format": _format}))})),
    "lfm_audio": _lfm_audio, "tools": weird, "temperature": weird})
_content = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "text", "output_text"]),
                           "text": _maybe(st.text(max_size=30))}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "audio": _maybe(_audio_b64)}),
    weird), max_size=3)
_item = st.fixed_dictionaries({"type": _maybe(st.just("message")),
                               "role": _maybe(st.sampled_from(["user", "assistant", "system"])),
                               "content": _content}, optional={"id": st.sampled_from(ITEM_IDS)})
_item_id = _maybe(st.sampled_from(ITEM_IDS))

EVENTS = {
    "session.update": st.fixed_dictionaries({"session": _maybe(_session)}),
    "input_audio_buffer.append": st.fixed_dictionaries({"audio": _maybe(_audio_b64)}),
    "input_audio_buffer.commit": st.just({}),
    "input_audio_buffer.clear": st.just({}),
    "conversation.item.create": st.fixed_dictionaries({"item": _maybe(_item)},
                                                      optional={"previous_item_id": _item_id}),
    "conversation.item.truncate": st.fixed_dictionaries({"item_id": _item_id, "content_index": _maybe(st.just(0)),
                                                         "audio_end_ms": _maybe(st.integers(0, 2000))}),
    "conversation.item.delete": st.fixed_dictionaries({"item_id": _item_id}),
    "conversation.item.retrieve": st.fixed_dictionaries({"item_id": _item_id}),
    "response.create": st.one_of(st.just({}), st.fixed_dictionaries({"response": _maybe(st.fixed_dictionaries(
        {}, optional={"max_output_tokens": _maybe(st.integers(1, 40)),
                      "output_modalities": _maybe(st.sampled_from([["audio"], ["text"]])),
                      "instructions": _maybe(st.text(max_size=20))}))})),
    "response.cancel": st.just({}),
    "output_audio_buffer.clear": st.just({}),
}
assert set(EVENTS) <= set(_CLIENT_EVENTS)


@st.composite
def events(draw) -> dict:
    kind = draw(st.sampled_from(sorted(EVENTS)))
    event = {"type": kind, **draw(EVENTS[kind])}
    mutation = draw(st.sampled_from(["none", "none", "none", "retype", "drop", "extra", "event_id"]))
    keys = sorted(event)
    if mutation == "retype":
        event[draw(st.sampled_from(keys))] = draw(weird)
    elif mutation == "drop":
        event.pop(draw(st.sampled_from(keys)))
    elif mutation == "extra":
        event[draw(st.text(max_size=8))] = draw(weird)
    elif mutation == "event_id":
        event["event_id"] = draw(weird)
    return event


class Built:
    """A frame made only when it is sent, so that a failing example's repr stays short."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind, self.n = kind, n

    def __repr__(self) -> str:
        return f"Built({self.kind!r}, {self.n})"

    def build(self) -> str:
        if self.kind == "huge":  # two-byte characters: over the byte limit, under it in characters
            return json.dumps({"type": "input_audio_buffer.append", "event_id": "huge", "audio": "é" * self.n},
                              ensure_ascii=False)
        inner = "[" * self.n + "]" * self.n if self.kind == "list" else '{"a": ' * self.n + "1" + "}" * self.n
        return '{"type": "session.update", "event_id": "deep", "session": {"type": "realtime", "lfm_audio": ' + \
            inner + "}}"


raw_frames = st.one_of(
    st.text(max_size=60),  # arbitrary text, mostly not JSON
    json_value.map(json.dumps),  # arbitrary JSON
    st.builds(Built, st.sampled_from(["list", "dict"]), st.integers(20, 50_000)),  # deep nesting
    st.builds(Built, st.just("huge"), st.integers(500_001, 900_000)),
    st.binary(max_size=301).map(bytes),  # a binary frame: raw audio, any byte count
    st.binary(min_size=1, max_size=20).map(lambda b: b"\xff\xfe" + b),  # not UTF-8 (as a binary frame)
)

frames = st.lists(st.one_of(events(), events(), events(), raw_frames), min_size=8, max_size=40)


# ---- the property
class StrictRunner(FakeRunner):
    """The scripted runner with the real one's limits on what reaches the model: a seed torch's generator
    takes, a clip with samples to encode. A value past them fails the slot, as on the real runner."""

    def step(self, plan: StepPlan) -> StepResult:
        failed = {}
        for slot, audio in plan.encode:
            if len(audio) == 0:
                failed[slot] = "could not encode the audio: empty clip"
        for start in plan.start:
            try:
                torch.Generator().manual_seed(start.seed) if start.seed is not None else None
            except (ValueError, RuntimeError) as e:
                failed[start.slot] = f"could not seed the response: {e}"
        out = super().step(plan)
        out.failed.update(failed)
        return out


@pytest.fixture(scope="module")
def server(tiny):
    runner = StrictRunner(reply=reply(tiny, frames=4), keep_plans=False)
    with served(tiny, runner, max_sessions=2) as srv:
        yield srv


def _send_all(rt, batch: list, counter: list) -> tuple[set[str], int]:
    """Sends the frames; returns the event ids sent and how many frames carried no string event_id."""
    ids, anonymous = set(), 0
    for n, frame in enumerate(batch):
        if isinstance(frame, dict) and "event_id" not in frame and n % 5:
            frame = {**frame, "event_id": f"f{counter[0]}"}
        counter[0] += 1
        if isinstance(frame, Built):
            ids.add("huge" if frame.kind == "huge" else "deep")
            rt.send(frame.build())
            continue
        if isinstance(frame, dict) and isinstance(frame.get("event_id"), str):
            ids.add(frame["event_id"])
        else:
            anonymous += 1
        rt.send(frame)
    sent["events"] += len(batch)
    return ids, anonymous


def _check(rt, ids: set[str], anonymous: int, start: int) -> None:
    rt.send({"type": "conversation.item.retrieve", "item_id": "no-such-item", "event_id": "probe"})
    _until_probe(rt)
    errors = [e["error"] for e in rt.events[start:] if e["type"] == "error" and e["error"]["event_id"] != "probe"]
    assert not [e for e in errors if e["type"] == "server_error"], errors
    stray = [e for e in errors if e["event_id"] is not None and e["event_id"] not in ids]
    assert not stray, stray
    assert sum(e["event_id"] is None for e in errors) <= anonymous, [e for e in errors if e["event_id"] is None]


def _until_probe(rt) -> None:
    while True:
        event = rt.receive(30)
        if event["type"] == "error" and event["error"]["event_id"] == "probe":
            return


def _completes_a_turn(rt) -> None:
    """The same session, whatever the sequence left it in, still answers."""
    rt.send({"type": "session.update", "event_id": "reset", "session": {
        "type": "realtime", "max_output_tokens": 6, "output_modalities": ["audio"],
        "audio": {"input": {"turn_detection": None}}}})
    rt.send({"type": "response.cancel", "event_id": "stop"})
    rt.send({"type": "conversation.item.create", "event_id": "last", "item": {
        "id": "last", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "there?"}]}})
    rt.send({"type": "response.create", "event_id": "turn"})
    answers: set[str] = set()  # the response items started right after ours
    while True:
        event = rt.receive(30)
        if event["type"] == "error":
            assert event["error"]["event_id"] in ("stop", "reset"), event
        if event["type"] == "conversation.item.added" and event["previous_item_id"] == "last":
            answers.add(event["item"]["id"])
        if event["type"] == "response.done" and event["response"]["output"][0]["id"] in answers:
            break
    assert event["response"]["status"] in ("completed", "incomplete"), event


@pytest.mark.slow
def test_fuzzed_events_get_errors_and_the_session_goes_on(server, caplog):
    counter = [0]
    caplog.set_level(logging.ERROR)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                     HealthCheck.function_scoped_fixture])
    @given(batch=frames)
    def one_sequence(batch):
        with realtime(server.client) as rt:
            rt.update(audio={"input": {"turn_detection": None}})  # VAD on random bytes would start turns
            start = len(rt.events)
            ids, anonymous = _send_all(rt, batch, counter)
            _check(rt, ids, anonymous, start)
            _completes_a_turn(rt)

    one_sequence()
    sent["sequences"] = sent["events"]
    bursts = 0
    with realtime(server.client) as rt:  # bursts: thousands of events as fast as the socket takes them
        while sent["events"] < MIN_EVENTS or bursts == 0:
            batch = [{"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(n % 7)).decode()}
                     if n % 50 else {"type": "input_audio_buffer.commit"} for n in range(BURST)]
            start = len(rt.events)
            ids, anonymous = _send_all(rt, batch, counter)
            _check(rt, ids, anonymous, start)
            bursts += 1
        _completes_a_turn(rt)
    assert server.slots_used() == 0
    assert sent["events"] >= MIN_EVENTS
    print(f"\n{sent['sequences']} events in {EXAMPLES} fuzzed sequences, {sent['events']} in all")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records


# ---- what the fuzzer found, one by one
def test_a_value_that_would_fail_later_is_refused_where_it_comes_in(server):
    """Each of these once failed the session at the next response (or raised in the handler); now each is an
    error naming its param, the rest of its update applies, and the session answers."""
    silence_1ms = base64.b64encode(bytes(48)).decode()
    with realtime(server.client) as rt:
        rt.update(audio={"input": {"turn_detection": None}})
        cases = [
            ({"lfm_audio": {"seed": 2 ** 70}, "max_output_tokens": 7}, "session.lfm_audio.seed"),
            ({"lfm_audio": {"seed": "7"}}, "session.lfm_audio.seed"),
            ({"lfm_audio": [1, 2]}, "session.lfm_audio"),
            ({"lfm_audio": {"audio_temperature": float("inf")}}, "session.lfm_audio.audio_temperature"),
            ({"lfm_audio": {"audio_top_k": True}}, "session.lfm_audio.audio_top_k"),
            ({"instructions": "word " * 2000}, "session.instructions"),
        ]
        for n, (session, param) in enumerate(cases):
            rt.send({"type": "session.update", "event_id": f"u{n}", "session": {"type": "realtime", **session}})
            error = rt.until("error")["error"]
            updated = rt.until("session.updated")
            assert (error["param"], error["event_id"], error["code"]) == (param, f"u{n}", "invalid_value"), error
        assert updated["session"]["max_output_tokens"] == 7  # the first update's other field applied
        assert updated["session"]["lfm_audio"]["seed"] is None
        for n, audio in enumerate(["", silence_1ms, base64.b64encode(b"\x01").decode()]):
            rt.send({"type": "conversation.item.create", "event_id": f"c{n}", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio}]}})
            error = rt.until("error")["error"]
            assert (error["param"], error["event_id"]) == ("item.content.0.audio", f"c{n}"), error
        done = rt.say("and now?")
    assert done["response"]["status"] == "incomplete" and done["response"]["usage"]["output_tokens"] == 7


def test_frames_that_cannot_be_parsed_still_get_their_event_id(server):
    with realtime(server.client) as rt:
        rt.send(Built("huge", 600_000).build())  # 600,000 characters, 1.2 MB: over a 1 MB limit in bytes
        too_large = rt.until("error")["error"]
        rt.send(Built("list", 5000).build())
        deep = rt.until("error")["error"]
        rt.send(Built("dict", 40).build())
        nested = rt.until("error")["error"]
        rt.send({"type": 5, "event_id": "typed"})
        typed = rt.until("error")["error"]
    assert (too_large["code"], too_large["event_id"]) == ("event_too_large", "huge")
    assert "1200" in too_large["message"].replace(",", "")[:200]
    assert (deep["code"], deep["event_id"]) == ("invalid_json", "deep")
    assert (nested["code"], nested["event_id"]) == ("invalid_event", "deep")
    assert (typed["code"], typed["event_id"]) == ("invalid_event", "typed")
