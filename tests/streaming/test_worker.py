"""The runner in its own process (streaming/worker.py): the same sequences as in process, an engine that
holds no weights, and a child that dies or cannot load is a clear failure, never a hang."""

from __future__ import annotations

import os
import signal

import pytest
from safetensors.torch import load_file

from models.checkpoint import load_header
from models.defaults import CHAT_PROMPT
from streaming.engine import Engine, EngineConfig
from streaming.messages import Mode, SessionFailed, Status
from streaming.worker import ProcessRunner, RunnerProcessError, RunnerSpec
from tests.conftest import ASSETS
from tests.streaming.test_engine import Client, _flat, _request, _script

pytestmark = pytest.mark.slow  # each module-level engine starts a child interpreter (torch import, load)


def _engine(tiny_dir, slots: int) -> Engine:
    header = load_header(tiny_dir)  # config and tokenizer only: the weights live in the child
    runner = ProcessRunner(RunnerSpec(str(tiny_dir), slots=slots, capacity=1024, threads=1))
    engine = Engine(header, EngineConfig(max_sessions=slots, max_context=1024, prefill_budget=64, admit_load=None),
                    runner=runner)
    engine.start()
    runner.wait_ready()
    return engine


@pytest.fixture(scope="module")
def engine(tiny_dir):
    eng = _engine(tiny_dir, 2)
    yield eng
    eng.stop()


def test_turns_in_the_runner_process_match_the_reference(engine):
    """The golden two-turn chat of test_engine.py, with the plans and results pickled across the pipe."""
    golden = load_file(ASSETS / "model_tiny.safetensors")
    c = Client(engine)
    r1, r2 = _script(c, [
        {"system": CHAT_PROMPT, "audio": golden["wave"].numpy(), "mode": Mode.CHAT},
        {"audio": golden["wave2"].numpy(), "text": "And now?", "mode": Mode.CHAT},
    ])
    for r, name in ((r1, "chat_turn1"), (r2, "chat_turn2")):
        kinds, values = _flat(r.items)
        assert kinds == golden[f"{name}_kinds"].tolist()
        assert values == golden[f"{name}_values"].tolist()
        assert r.status == Status.INCOMPLETE
    assert len(c.audio("r1_0")) == r1.usage.output_audio_frames * 1920
    c.session.close()
    assert engine.ready


def test_a_dead_runner_process_fails_every_session_and_readiness(tiny_dir):
    engine = _engine(tiny_dir, 1)
    try:
        c = Client(engine)
        c.session.add_item("sys", "system", text=CHAT_PROMPT)
        engine.runner.wait_ready()
        os.kill(engine.runner.pid, signal.SIGKILL)  # while serving
        c.session.respond(_request("r"))
        assert c.wait_for(lambda events: any(isinstance(e, SessionFailed) for e in events), 30)
        assert "runner process died" in c.failed
        assert not engine.ready
    finally:
        engine.stop()


def test_a_checkpoint_the_child_cannot_load_is_a_clear_error(tmp_path):
    runner = ProcessRunner(RunnerSpec(str(tmp_path / "missing")))
    with pytest.raises(RunnerProcessError, match=r"failed \(start\)(.|\n)*not a checkpoint directory"):
        runner.wait_ready()
    runner.close()
