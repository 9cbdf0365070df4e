"""The engine loop on a scripted runner (tests/streaming/fakes.py): command order, cancel, failures stay
contained, a crash fails everyone, admission. Driven on this thread (Engine.run_until_idle) unless the
test is about the engine thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from models.defaults import INPUT_RATE
from models.generation import Modality
from streaming.collector import EventCollector
from streaming.engine import Engine, EngineConfig
from streaming.messages import (
    AudioDelta,
    EngineFull,
    ItemAdded,
    Mode,
    ResponseDone,
    ResponseRequest,
    SessionFailed,
    Status,
)
from tests.streaming.fakes import FakeRunner


def _engine(tiny, runner: FakeRunner, **config) -> Engine:
    return Engine(tiny, EngineConfig(**{"max_sessions": 2, "max_context": 512, **config}), runner=runner)


def _request(rid: str, tokens: int = 20, mode: Mode = Mode.CHAT) -> ResponseRequest:
    return ResponseRequest(rid, f"item_{rid}", mode, max_tokens=tokens)


def test_commands_apply_in_order_and_a_clip_is_encoded_before_its_prefill(tiny):
    runner = FakeRunner()
    eng = _engine(tiny, runner)
    heard = EventCollector()
    s = eng.open(heard)
    s.add_item("sys", "system", text="Be brief.")
    s.add_item("u1", "user", audio=np.zeros(INPUT_RATE, np.float32))
    s.respond(_request("r1", tokens=20))
    eng.run_until_idle()
    kinds = runner.kinds()
    assert kinds[:2] == ["encode", "prefill"] and set(kinds[2:-1]) == {"decode"}
    assert runner.plans[0].reset == [0]  # the new session's row is cleared before anything runs on it
    prefill = runner.plans[1].prefill[0]
    assert prefill.position == 0 and prefill.last
    audio = [seg for seg in prefill.segments if seg.kind == Modality.AUDIO_IN]
    assert len(audio) == 1 and len(audio[0]) == INPUT_RATE // 1280  # the clip the runner encoded
    added = [e.item_id for e in heard.events if isinstance(e, ItemAdded)]
    assert added == ["sys", "u1"]
    done = heard.done("r1")
    assert done.status == Status.INCOMPLETE and len(done.items) == 20
    # interleaved: 6 text tokens, then 12 frames of speech (each spoken: one AudioDelta per frame)
    assert done.usage.output_text_tokens == 8 and done.usage.output_audio_frames == 12
    assert [e.frame for e in heard.events if isinstance(e, AudioDelta)] == [*range(12), 12]  # 12 frames, the tail
    assert heard.text("r1") == done.text


def test_a_second_turn_prefills_only_what_is_new(tiny):
    runner = FakeRunner()
    eng = _engine(tiny, runner)
    heard = EventCollector()
    s = eng.open(heard)
    s.add_item("u1", "user", text="hi")
    s.respond(_request("r1", tokens=5))
    eng.run_until_idle()
    held = s.conversation.position
    s.add_item("u2", "user", text="more")
    s.respond(_request("r2", tokens=5))
    eng.run_until_idle()
    second = [p.prefill[0] for p in runner.plans if p.prefill][-1]
    assert second.position == held and not second.reset
    assert heard.done("r2").usage.cached_positions == held
    s.delete_item("u1")  # an edit inside the held history: the next prefill rebuilds from the start
    s.respond(_request("r3", tokens=5))
    eng.run_until_idle()
    third = [p.prefill[0] for p in runner.plans if p.prefill][-1]
    assert third.position == 0 and third.reset
    with pytest.raises(KeyError):
        s.delete_item("u1")
    with pytest.raises(ValueError):
        s.add_item("u2", "user", text="same id")


def test_cancel_takes_effect_at_the_next_iteration(tiny):
    cancelled_at: list[int] = []

    def client(n: int, plan) -> None:
        if len([p for p in runner.plans if p.decode]) == 5 and not cancelled_at:
            s.cancel("turn_detected")  # arrives while step n runs
            cancelled_at.append(n)

    runner = FakeRunner(on_step=client)
    eng = _engine(tiny, runner)
    heard = EventCollector()
    s = eng.open(heard)
    s.add_item("u", "user", text="go")
    s.respond(_request("r", tokens=100))
    eng.run_until_idle()
    n = cancelled_at[0]
    assert runner.plans[n].decode  # the step it arrived in still ran
    assert not any(p.decode for p in runner.plans[n + 1:])  # and nothing after it
    done = heard.done("r")
    assert done.status == Status.CANCELLED and done.reason == "turn_detected" and len(done.items) == 5


def test_a_failing_slot_fails_its_session_only(tiny):
    runner = FakeRunner(fail_prefill={1})
    eng = _engine(tiny, runner)
    good, bad = EventCollector(), EventCollector()
    a, b = eng.open(good), eng.open(bad)
    for s in (a, b):
        s.add_item("u", "user", text="hi")
        s.respond(_request(f"r{s.id}", tokens=10))
    eng.run_until_idle()
    assert [e.message for e in bad.events if isinstance(e, SessionFailed)] == ["prefill failed: scripted"]
    assert good.done(f"r{a.id}").status == Status.INCOMPLETE
    assert good.failed is None
    assert eng.slots_free == 1 and eng.stats().sessions_failed == 1


def test_a_sink_that_raises_fails_its_own_session_only(tiny):
    eng = _engine(tiny, FakeRunner())
    good = EventCollector()
    failed: list = []

    def broken(event) -> None:
        if isinstance(event, AudioDelta):
            raise RuntimeError("client bug")
        failed.append(event)

    a, b = eng.open(good), eng.open(broken)
    for s in (a, b):
        s.add_item("u", "user", text="hi")
        s.respond(_request(f"r{s.id}", tokens=30))
    eng.run_until_idle()
    assert isinstance(failed[-1], SessionFailed) and failed[-1].message == "event sink raised"
    assert good.done(f"r{a.id}").status == Status.INCOMPLETE


def test_an_engine_crash_fails_every_session_and_drops_ready(tiny):
    runner = FakeRunner(crash_at=3)
    eng = _engine(tiny, runner)
    eng.start()
    try:
        got = [EventCollector(), EventCollector()]
        sessions = [eng.open(heard) for heard in got]
        assert eng.ready
        for s in sessions:
            s.add_item("u", "user", text="hi")
            s.respond(_request(f"r{s.id}", tokens=50))
        deadline = time.monotonic() + 10
        while eng.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not eng.ready and isinstance(eng.error, RuntimeError)
        for heard in got:
            assert heard.failed is not None and "runner crashed" in heard.failed
    finally:
        eng.stop()


def test_admission_counts_a_closed_session_free_at_once_and_helpers_take_spare_slots_only(tiny):
    eng = _engine(tiny, FakeRunner())
    heard = EventCollector()
    a = eng.open(heard)
    b = eng.open(lambda e: None)
    with pytest.raises(EngineFull):
        eng.open(lambda e: None)
    b.close()
    c = eng.open(lambda e: None)  # before the engine applied the close
    a.add_item("u", "user", audio=np.zeros(INPUT_RATE, np.float32))
    a.transcribe("u", "asr_u")  # both slots are taken or promised: no spare one
    eng.run_until_idle()
    refused = heard.done("asr_u")
    assert refused.status == Status.FAILED and refused.reason == "no free slot for transcription"
    c.close()
    eng.run_until_idle()
    a.transcribe("u", "asr_u2")  # now a slot is spare
    eng.run_until_idle()
    assert heard.done("asr_u2").status in (Status.COMPLETED, Status.INCOMPLETE)
    assert eng.slots_free == 1 and eng.scheduler.used == 1  # the helper released its slot


def test_commands_from_many_threads_keep_each_sessions_order(tiny):
    eng = _engine(tiny, FakeRunner(), max_sessions=4)
    eng.start()
    try:
        done = threading.Event()
        results: dict[int, list] = {}

        def client(k: int) -> None:
            heard = EventCollector()
            s = eng.open(heard)
            for turn in range(3):
                s.add_item(f"u{turn}", "user", text=f"turn {turn}")
                s.respond(_request(f"r{turn}", tokens=4))
            heard.wait_all(["r0", "r1", "r2"], 20)
            results[k] = [e.response_id for e in heard.events if isinstance(e, ResponseDone)]  # in arrival order
            ids = [it.id for it in s.conversation.items]
            assert ids == ["u0", "item_r0", "u1", "item_r1", "u2", "item_r2"], ids
            if len(results) == 4:
                done.set()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {k: ["r0", "r1", "r2"] for k in range(4)}
    finally:
        eng.stop()
