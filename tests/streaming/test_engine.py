"""The engine: batched sessions produce exactly what each produces alone, cached turns equal a full
re-prefill (and the reference), cancel and failures stay contained, admission refuses when full."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from safetensors.torch import load_file

from models.conversation import Item
from models.defaults import ASR_PROMPT, CHAT_PROMPT, TRANSCRIPTION_TOKENS
from models.sampling import SamplingParams
from streaming.collector import EventCollector
from streaming.engine import Engine, EngineConfig
from streaming.messages import AudioDelta, EngineFull, Mode, ResponseDone, ResponseRequest, SessionFailed, Status
from streaming.offline import Chat
from tests.conftest import ASSETS

TOKENS = 48
GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def golden():
    return load_file(ASSETS / "model_tiny.safetensors")


class Client(EventCollector):
    """A session and the events it heard (streaming/collector.py: wait, audio); optionally a sink that raises."""

    def __init__(self, engine: Engine, *, fail_on_audio: bool = False) -> None:
        super().__init__()
        self.fail_on_audio = fail_on_audio
        self.session = engine.open(self)

    def __call__(self, event) -> None:
        if self.fail_on_audio and isinstance(event, AudioDelta):
            raise RuntimeError("client bug")
        super().__call__(event)


def _request(rid: str, mode: Mode = Mode.CHAT, tokens: int = TOKENS, **kw) -> ResponseRequest:
    greedy = {"audio_temperature": 0.0, "audio_top_k": 0}
    return ResponseRequest(rid, f"item_{rid}", mode, max_tokens=tokens, **{**greedy, **kw})


@pytest.fixture
def engine(tiny):
    eng = Engine(tiny, EngineConfig(max_sessions=4, max_context=1024, prefill_budget=64))
    eng.start()
    yield eng
    eng.stop()


def _script(client: Client, turns: list[dict]) -> list[ResponseDone]:
    """Run a conversation: each turn is {user_audio|user_text|system, mode}; waits for each response."""
    out = []
    for n, turn in enumerate(turns):
        if "system" in turn:
            client.session.add_item(f"sys{n}", "system", text=turn["system"])
        if "audio" in turn or "text" in turn:
            client.session.add_item(f"user{n}", "user", text=turn.get("text"), audio=turn.get("audio"))
        if "mode" in turn:
            rid = f"r{client.session.id}_{n}"
            client.session.respond(_request(rid, turn["mode"], turn.get("tokens", TOKENS)))
            out.append(client.wait(rid))
    return out


def _flat(items) -> tuple[list[int], list[list[int]]]:
    kinds = [1 if isinstance(i, int) else 3 for i in items]
    values = [[i] + [0] * 7 if isinstance(i, int) else list(i) for i in items]
    return kinds, values


def test_engine_turns_match_the_reference(engine, golden):
    """Two chat turns with the state kept between them: the reference's greedy sequences (it re-prefills)."""
    c = Client(engine)
    wave, wave2 = golden["wave"].numpy(), golden["wave2"].numpy()
    r1, r2 = _script(c, [
        {"system": CHAT_PROMPT, "audio": wave, "mode": Mode.CHAT},
        {"audio": wave2, "text": "And now?", "mode": Mode.CHAT},
    ])
    for r, name in ((r1, "chat_turn1"), (r2, "chat_turn2")):
        kinds, values = _flat(r.items)
        assert kinds == golden[f"{name}_kinds"].tolist()
        assert values == golden[f"{name}_values"].tolist()
        assert r.status == Status.INCOMPLETE and r.reason == "max_output_tokens"
    assert r2.usage.cached_positions > 0  # turn 2 reused turn 1's state
    assert r2.usage.input_positions < r2.usage.cached_positions
    assert len(c.audio("r1_0")) == r1.usage.output_audio_frames * 1920


def _conversations(golden):
    wave, wave2 = golden["wave"].numpy(), golden["wave2"].numpy()
    return [
        [{"system": CHAT_PROMPT, "audio": wave, "mode": Mode.CHAT},
         {"text": "Tell me more.", "mode": Mode.CHAT, "tokens": 30}],
        [{"system": ASR_PROMPT, "audio": wave2, "mode": Mode.ASR, "tokens": 20}],
        [{"system": "Perform TTS. Use the US male voice.", "text": "Good morning!", "mode": Mode.TTS, "tokens": 25}],
        [{"system": CHAT_PROMPT, "text": "Hi there", "mode": Mode.CHAT, "tokens": 60}],
    ]


@pytest.mark.parametrize("static", [True, False], ids=["static", "serving-default"])
def test_batched_sessions_equal_each_alone(tiny, golden, static):
    """static: every step runs every slot (masked), so a row's numbers cannot depend on the batch: exactly equal.
    The serving default runs only the rows that decode, with attention up to the longest of them; its greedy
    sequences are the same too (test_engine_turns_match_the_reference checks them against the goldens)."""
    engine = Engine(tiny, EngineConfig(max_sessions=4, max_context=1024, prefill_budget=64, static_batch=static,
                                       first_audio_lead_s=float("inf")))  # everyone decodes each step: real batches
    engine.start()
    try:
        _batched_equal_alone(engine, golden)
    finally:
        engine.stop()


def _batched_equal_alone(engine, golden):
    convs = _conversations(golden)
    alone = []
    for turns in convs:
        c = Client(engine)
        alone.append([r.items for r in _script(c, turns)])
        c.session.close()

    results: list = [None] * len(convs)

    def run(i):
        c = Client(engine)
        results[i] = [r.items for r in _script(c, convs[i])]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results == alone
    stats = engine.stats()
    assert max(stats.batch_sizes) >= 2  # they really shared decode steps


def test_cached_turns_equal_full_reprefill(engine, tiny, golden):
    wave = golden["wave"].numpy()
    turns = [{"system": CHAT_PROMPT, "audio": wave, "mode": Mode.CHAT, "tokens": 30},
             {"text": "What else?", "mode": Mode.CHAT, "tokens": 30},
             {"audio": wave[:8000], "mode": Mode.CHAT, "tokens": 30}]
    cached = [r.items for r in _script(Client(engine), turns)]

    chat = Chat(tiny, capacity=1024)  # the single-session driver: one slot, on this thread
    chat.turn("system", text=CHAT_PROMPT)
    rebuilt = []
    for turn in turns:
        chat.turn("user", text=turn.get("text"), audio=turn.get("audio"))
        chat.rebuild()  # the reference's way: prefill everything again
        done = chat.respond(Mode.CHAT, turn["tokens"], GREEDY, GREEDY)
        assert done.usage.cached_positions == 0
        rebuilt.append(done.items)
    assert cached == rebuilt


def test_cancel_mid_response_then_new_turn(engine, tiny, golden):
    wave = golden["wave"].numpy()
    free = engine.slots_free
    c = Client(engine)
    c.session.add_item("sys", "system", text=CHAT_PROMPT)
    c.session.add_item("u1", "user", audio=wave)
    c.session.respond(_request("long", tokens=400))
    assert c.wait_for(lambda events: sum(isinstance(e, AudioDelta) for e in events) >= 3, 60)
    c.session.cancel("turn_detected")
    cancelled = c.wait("long")
    assert cancelled.status == Status.CANCELLED and cancelled.reason == "turn_detected"
    assert len(cancelled.items) < 400
    c.session.add_item("u2", "user", text="Sorry, go on.")
    c.session.respond(_request("next", tokens=30))
    after = c.wait("next")

    # The same history, prefilled from scratch, gives the same continuation.
    chat = Chat(tiny, capacity=1024)
    chat.turn("system", text=CHAT_PROMPT)
    chat.turn("user", audio=wave)
    item = Item("long", "assistant")
    for value in cancelled.items:
        item.append_generated(1 if isinstance(value, int) else 3, value)
    with chat.session.lock:
        chat.session.conversation.add(item)
    chat.turn("user", text="Sorry, go on.")
    chat.rebuild()
    assert after.items == chat.respond(Mode.CHAT, 30, GREEDY, GREEDY).items

    c.session.close()
    deadline = time.monotonic() + 5
    while engine.slots_free != free and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.slots_free == free


def test_a_failing_session_does_not_disturb_the_others(engine, golden):
    convs = _conversations(golden)
    alone = [r.items for r in _script(Client(engine), convs[0])]

    bad = Client(engine, fail_on_audio=True)
    bad.session.add_item("sys", "system", text=CHAT_PROMPT)
    bad.session.add_item("u", "user", text="hello")
    good = Client(engine)
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(r.items for r in _script(good, convs[0])))
    worker.start()
    bad.session.respond(_request("bad", tokens=200))
    worker.join(300)
    assert bad.wait_for(lambda events: any(isinstance(e, SessionFailed) for e in events), 60)
    assert result == alone
    assert engine.ready


def test_admission_refuses_when_full_and_frees_on_close(tiny):
    eng = Engine(tiny, EngineConfig(max_sessions=2, max_context=256))
    eng.start()
    try:
        a, b = eng.open(lambda e: None), eng.open(lambda e: None)
        with pytest.raises(EngineFull):
            eng.open(lambda e: None)
        a.close()
        deadline = time.monotonic() + 5
        while eng.slots_free == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        eng.open(lambda e: None).close()
        b.close()
    finally:
        eng.stop()
    assert not eng.ready


def test_context_limit_drops_oldest_turns(tiny, golden):
    eng = Engine(tiny, EngineConfig(max_sessions=1, max_context=192, prefill_budget=32))
    eng.start()
    try:
        c = Client(eng)
        wave = golden["wave"].numpy()
        turns = [{"system": CHAT_PROMPT, "audio": wave, "mode": Mode.CHAT, "tokens": 40}] + [
            {"text": f"Question {n}?", "mode": Mode.CHAT, "tokens": 40} for n in range(3)]
        results = _script(c, turns)
        assert all(r.status == Status.INCOMPLETE for r in results)
        assert results[-1].usage.cached_positions == 0  # rebuilt from the kept history
    finally:
        eng.stop()


def test_transcription_runs_on_a_spare_slot(engine, golden, tiny):
    c = Client(engine)
    wave = golden["wave"].numpy()
    c.session.add_item("sys", "system", text=CHAT_PROMPT)
    c.session.add_item("u1", "user", audio=wave)
    c.session.transcribe("u1", "asr1")
    done = c.wait("asr1")
    asr = Chat(tiny, capacity=1024)
    asr.turn("system", text=ASR_PROMPT)
    asr.turn("user", audio=wave)
    expected = asr.respond(Mode.ASR, TRANSCRIPTION_TOKENS, GREEDY, GREEDY, speak=False).items
    assert done.items == expected
    assert done.text == tiny.tokenizer.decode([i for i in expected if isinstance(i, int)])


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_engine_releases_memory_of_closed_sessions(engine):
    def cycle():
        c = Client(engine)
        _script(c, [{"system": CHAT_PROMPT, "text": "Hi", "mode": Mode.CHAT, "tokens": 20}])
        c.session.close()

    for _ in range(3):
        cycle()
    gc.collect()
    before = _rss_mb()
    for _ in range(15):
        cycle()
    gc.collect()
    time.sleep(0.1)
    assert engine.slots_free == engine.config.max_sessions
    assert engine.scheduler.used == 0
    assert _rss_mb() - before < 20


def test_a_stuck_engine_reports_not_ready(tiny):
    eng = Engine(tiny, EngineConfig(max_sessions=1, max_context=256, stall_s=0.2))
    original = eng.runner.step

    def slow_step(plan):
        if plan.decode:
            time.sleep(1.0)  # a step that hangs far longer than stall_s
        return original(plan)

    eng.runner.step = slow_step
    eng.start()
    try:
        assert eng.ready
        c = Client(eng)
        c.session.add_item("u", "user", text="hi")
        c.session.respond(_request("stuck", tokens=3))
        deadline = time.monotonic() + 5
        while eng.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not eng.ready  # busy, and no iteration finished for longer than stall_s
        c.wait("stuck", 30)
    finally:
        eng.stop()
