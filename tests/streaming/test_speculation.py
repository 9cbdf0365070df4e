"""Speculative start on a scripted runner (tests/streaming/fakes.py): the work runs ahead and is held, a confirm lets
out exactly what a plain turn gives, a drop leaves the slot as it was, and speculation yields to real work."""

from __future__ import annotations

import numpy as np

from models.defaults import FRAME_S, INPUT_RATE, SPECULATION_AHEAD_S
from models.generation import Modality
from streaming.collector import EventCollector
from streaming.engine import Engine, EngineConfig
from streaming.messages import AudioDelta, ItemAdded, ResponseDone, ResponseRequest, TextDelta
from streaming.scheduler import SlotView, may_speculate, plan_iteration
from tests.streaming.fakes import FakeRunner

CLIP = np.zeros(INPUT_RATE, np.float32)


def _engine(tiny, runner: FakeRunner, **config) -> Engine:
    return Engine(tiny, EngineConfig(**{"max_sessions": 2, "max_context": 512, "admit_load": None, **config}),
                  runner=runner)


def _request(rid: str, tokens: int = 30) -> ResponseRequest:
    return ResponseRequest(rid, f"item_{rid}", max_tokens=tokens, seed=1)


def _history(eng: Engine, heard: EventCollector):
    """A session with one finished turn: the speculation starts on a row that holds something."""
    s = eng.open(heard)
    s.add_item("sys", "system", text="Be brief.")
    s.add_item("u0", "user", text="hello")
    s.respond(_request("r0", tokens=8))
    eng.run_until_idle()
    return s


def _shape(events) -> list:
    """What a client is told, in order, without the ids that differ between runs."""
    out = []
    for e in events:
        if isinstance(e, AudioDelta):
            out.append(("audio", e.frame, len(e.pcm)))
        elif isinstance(e, TextDelta):
            out.append(("text", e.text))
        elif isinstance(e, ItemAdded):
            out.append(("added", e.item_id, e.positions))
        elif isinstance(e, ResponseDone):
            out.append(("done", e.status, e.items))
    return out


def test_held_until_confirmed_then_the_same_as_a_plain_turn(tiny):
    plain_runner, plain_heard = FakeRunner(), EventCollector()
    plain = _engine(tiny, plain_runner)
    s = _history(plain, plain_heard)
    before = len(plain_heard.events)
    s.add_item("u1", "user", audio=CLIP)
    s.respond(_request("r1"))
    plain.run_until_idle()
    want = _shape(plain_heard.events[before:])

    runner, heard = FakeRunner(), EventCollector()
    eng = _engine(tiny, runner)
    s = _history(eng, heard)
    before, steps = len(heard.events), len(runner.plans)
    s.speculate(_request("r1"), "u1", CLIP)
    eng.run_until_idle()
    assert len(heard.events) == before  # nothing before the commit
    ahead = runner.plans[steps:]
    assert [p.encode != [] for p in ahead][:1] == [True] and any(p.prefill for p in ahead)
    assert ahead[1].snapshot == [0] and ahead[1].prefill  # the state kept right before the first prefill
    spoken = sum(1 for p in ahead for d in p.decode if d.want == Modality.AUDIO_OUT)
    assert spoken == round(SPECULATION_AHEAD_S / FRAME_S)  # then it waits for the commit
    assert s.view("u1") is None  # no client sees the provisional items
    s.confirm("user view", "assistant view")
    eng.run_until_idle()
    assert _shape(heard.events[before:]) == want
    assert runner.plans[len(ahead) + steps].forget == [0]
    assert s.view("u1") == "user view" and s.view("item_r1") == "assistant view"
    st = eng.stats()
    assert (st.speculative_starts, st.speculative_hits, st.speculative_drops) == (1, 1, 0)
    assert len(st.speculative_saved_seconds) == 1 and st.speculative_saved_seconds[0] > 0


def test_a_drop_leaves_the_slot_as_it_was(tiny):
    runner, heard = FakeRunner(), EventCollector()
    eng = _engine(tiny, runner)
    s = _history(eng, heard)
    items, position, events = list(s.conversation.items), s.conversation.position, len(heard.events)
    first = len(runner.plans)
    s.speculate(_request("r1"), "u1", CLIP)
    eng.run_until_idle()
    assert any(p.prefill for p in runner.plans[first:]) and any(p.decode for p in runner.plans[first:])
    steps = len(runner.plans)
    s.drop()
    eng.run_until_idle()
    assert runner.plans[steps].restore == [0]  # the row's conv state goes back
    c = s.conversation
    assert c.items == items and c.position == position and not c.stale and len(heard.events) == events
    # The same ids again (speech resumed, then paused once more): a fresh speculation, confirmed.
    s.speculate(_request("r2"), "u1", CLIP)
    eng.run_until_idle()
    s.confirm("u", "a")
    eng.run_until_idle()
    prefills = [p.prefill[0] for p in runner.plans[steps:] if p.prefill]
    assert prefills[0].position == position and not prefills[0].reset  # only what is new, on the restored row
    assert heard.done("r2").usage.cached_positions == position and "r1" not in {
        e.response_id for e in heard.events if isinstance(e, ResponseDone)}
    st = eng.stats()
    assert (st.speculative_starts, st.speculative_hits, st.speculative_drops) == (2, 1, 1)


def test_an_edit_drops_the_speculation_first(tiny):
    runner, heard = FakeRunner(), EventCollector()
    eng = _engine(tiny, runner)
    s = _history(eng, heard)
    s.speculate(_request("r1"), "u1", CLIP)
    s.add_item("t", "user", text="typed instead")  # before the engine even saw the speculation
    s.respond(_request("r2", tokens=5))
    eng.run_until_idle()
    assert [it.id for it in s.conversation.items] == ["sys", "u0", "item_r0", "t", "item_r2"]
    assert heard.done("r2") is not None and eng.stats().speculative_starts == 0


def test_speculation_waits_for_real_work_and_never_while_saturated(tiny):
    runner = FakeRunner(step_s=0.07)  # every step slower than saturated_step_s (0.06)
    eng = _engine(tiny, runner)
    a, b = eng.open(EventCollector()), eng.open(EventCollector())
    a.add_item("u", "user", text="go")
    a.respond(_request("ra", tokens=12))
    b.speculate(_request("rb"), "ub", CLIP)
    eng.run_until_idle()
    a_steps = [n for n, p in enumerate(runner.plans) if any(d.slot == 0 for d in p.decode)]
    b_work = [n for n, p in enumerate(runner.plans) if p.encode or any(d.slot == 1 for d in p.decode)]
    assert len(a_steps) == 12 and b_work and min(b_work) > max(a_steps)


def _view(slot: int, **kw) -> SlotView:
    return SlotView(slot, kw.pop("waiting_since", 0.0), kw.pop("pending", 0), kw.pop("generating", True),
                    kw.pop("lead_s", 1.0), **kw)


def test_the_policy_runs_speculation_only_where_it_costs_no_one():
    args = {"last_step_s": 0.02, "saturated_step_s": 0.06, "lead_s": 0.4}
    assert may_speculate([], **{**args, "last_step_s": 1.0})  # nobody to delay
    assert may_speculate([_view(0, lead_s=0.5)], **args)
    assert not may_speculate([_view(0, lead_s=0.5)], **{**args, "last_step_s": 0.07})  # saturated
    assert not may_speculate([_view(0, lead_s=0.2)], **args)  # close to running dry
    assert not may_speculate([_view(0, awaiting_audio=True)], **args)  # working towards its first audio
    assert not may_speculate([_view(0, pending=10, generating=False)], **args)  # waiting for its prefill
    # A speculative row awaiting audio never makes a real one sit out; its prefill takes what budget is left.
    plan = plan_iteration([_view(0, lead_s=2.0), _view(1, pending=40, generating=False, speculative=True,
                                                       awaiting_audio=True, waiting_since=-1.0),
                           _view(2, pending=40, generating=False, waiting_since=0.0)],
                          prefill_budget=60, last_step_s=0.0, saturated_step_s=0.06, lead_s=1.5,
                          first_audio_lead_s=0.4)
    assert plan.decode == [0] and plan.prefill == [(2, 40), (1, 20)]
