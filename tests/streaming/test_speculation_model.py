"""Speculative start on the real tiny model, greedy: a confirmed speculation gives exactly the tokens and frames of
the same committed clip without it, and after a dropped one the slot's next turn gives exactly what it gives when
nothing was speculated (the conv state restored, the KV cache truncated)."""

from __future__ import annotations

import numpy as np
import pytest

from models.defaults import INPUT_RATE
from streaming.collector import EventCollector
from streaming.engine import Engine, EngineConfig
from streaming.messages import AudioDelta, ResponseRequest

TOKENS = 40  # past the text lead-in and SPECULATION_AHEAD_S of speech: the response goes on after the commit


def _clip(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(INPUT_RATE) / INPUT_RATE
    return (0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _request(rid: str) -> ResponseRequest:
    return ResponseRequest(rid, f"item_{rid}", max_tokens=TOKENS, audio_temperature=0.0, audio_top_k=0)


def _fresh(tiny) -> tuple:
    """A one-slot engine driven on this thread, and a session that has had one spoken turn."""
    eng = Engine(tiny, EngineConfig(max_sessions=1, max_context=1024, admit_load=None))
    heard = EventCollector()
    s = eng.open(heard)
    s.add_item("sys", "system", text="Respond with interleaved text and audio.")
    s.add_item("u0", "user", audio=_clip(0))
    s.respond(_request("r0"))
    eng.run_until_idle()
    return eng, s, heard


def _plain_turn(eng, s, heard, rid: str, clip: np.ndarray) -> tuple:
    s.add_item(f"u_{rid}", "user", audio=clip)
    s.respond(_request(rid))
    eng.run_until_idle()
    return heard.done(rid).items


def _speech(heard, rid: str) -> np.ndarray:
    return np.concatenate([e.pcm for e in heard.events if isinstance(e, AudioDelta) and e.response_id == rid])


@pytest.mark.slow
def test_confirmed_speculation_equals_the_plain_turn(tiny):
    eng, s, heard = _fresh(tiny)
    want = _plain_turn(eng, s, heard, "r1", _clip(1))
    want_pcm = _speech(heard, "r1")

    eng, s, heard = _fresh(tiny)
    s.speculate(_request("r1"), "u_r1", _clip(1))
    eng.run_until_idle()
    assert eng.stats(drain=False).speculative_starts == 1 and heard.done("r1") is None
    s.confirm("user", "assistant")
    eng.run_until_idle()
    assert heard.done("r1").items == want
    np.testing.assert_array_equal(_speech(heard, "r1"), want_pcm)


@pytest.mark.slow
def test_after_a_drop_the_next_turn_is_as_if_nothing_was_speculated(tiny):
    """(Checked to fail with the runner's restore_row taken out.)"""
    eng, s, heard = _fresh(tiny)
    want = _plain_turn(eng, s, heard, "r1", _clip(1))

    eng, s, heard = _fresh(tiny)
    s.speculate(_request("rx"), "u_rx", _clip(7))  # a different clip, prefilled and decoded ahead, then dropped
    eng.run_until_idle()
    assert eng.stats(drain=False).speculative_starts == 1
    s.drop()
    assert _plain_turn(eng, s, heard, "r1", _clip(1)) == want
    assert eng.stats(drain=False).speculative_drops == 1
