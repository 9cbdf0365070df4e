"""Mimi codec: official tensor names, streaming == offline, per-row state isolation, reference goldens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import models.mimi as mimi_module
from models.config import ConfigError
from models.mimi import Mimi, MimiConfig, MimiDecoderState, MimiInputError, random_state_dict
from tests.conftest import SPEC_DIR

ROOT = Path(__file__).resolve().parents[2]
SPEC = SPEC_DIR / "mimi.tokenizer-e351c8d8-checkpoint125.safetensors.json"
GOLDEN = ROOT / "tests" / "golden" / "assets" / "mimi_tiny.safetensors"
FRAME = 1920


@pytest.fixture(scope="module")
def tiny() -> Mimi:
    cfg = MimiConfig.tiny()
    m = Mimi(cfg).eval()
    m.load_state_dict(random_state_dict(cfg, seed=1), strict=True)
    return m


def _codes(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2048, shape, generator=torch.Generator().manual_seed(seed))


def _state_tensors(state: MimiDecoderState) -> list[torch.Tensor]:
    return [state.pos, state.keys, state.values, *state.convs]


def _row(t: torch.Tensor, r: int) -> torch.Tensor:
    """Row r of a state tensor (keys/values are [layers, rows, ...], the others [rows, ...])."""
    return t[:, r] if t.dim() == 5 else t[r]


# ---------------------------------------------------------------------------------------------
# Config and names


def test_full_config_matches_official_tensor_spec():
    spec = json.loads(SPEC.read_text())["tensors"]
    with torch.device("meta"):
        model = Mimi(MimiConfig())
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    want = [(t["name"], tuple(t["shape"]), t["dtype"]) for t in spec]
    assert len(want) == 318
    assert sorted(set(ours) ^ set(want)) == []
    assert [n for n, *_ in ours] == [n for n, *_ in want]  # same order as the file, too


def test_config_derived_sizes_and_roundtrip(tmp_path):
    full, tiny = MimiConfig(), MimiConfig.tiny()
    for cfg in (full, tiny):
        assert (cfg.frame_size, cfg.stride, cfg.encoder_rate, cfg.codebooks, cfg.bins) == (1920, 2, 25, 8, 2048)
        assert MimiConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (tiny.n_q, tiny.n_q_semantic) == (8, 1)
    assert MimiConfig.from_dir(tmp_path) == full  # official checkpoints carry no mimi_config.json
    (tmp_path / "mimi_config.json").write_text(json.dumps(tiny.to_dict()))
    assert MimiConfig.from_dir(tmp_path) == tiny
    (tmp_path / "mimi_config.json").write_text(json.dumps({**tiny.to_dict(), "colour": 1}))
    with pytest.raises(ConfigError, match="colour"):
        MimiConfig.from_dir(tmp_path)
    with pytest.raises(ConfigError, match="heads"):
        MimiConfig(d_model=12, num_heads=8)
    with pytest.raises(ConfigError, match="codebooks"):
        MimiConfig(codebooks=40)


def test_tiny_weights_are_small():
    sd = random_state_dict(MimiConfig.tiny(), seed=0)
    assert sum(t.numel() * t.element_size() for t in sd.values()) < 600_000
    assert all(t.dtype == torch.float32 for t in sd.values())


# ---------------------------------------------------------------------------------------------
# Streaming


def test_streaming_rows_at_different_times_equal_offline(tiny):
    """3 rows, 7 frames each (14 transformer steps, context 5: the ring wraps), advancing on different
    ticks, addressed by slot in varying order, with masked-out rows mixed in."""
    T = 7
    codes = _codes(3, 8, T)
    want = tiny.decode(codes)
    assert want.shape == (3, T * FRAME)
    state = MimiDecoderState.allocate(tiny.cfg, rows=4)  # one spare slot that must stay untouched
    spare = [t.clone() for t in _state_tensors(state)]
    got: list[list[torch.Tensor]] = [[], [], []]
    done = [0, 0, 0]
    tick = 0
    while min(done) < T:
        # row 0 every tick, row 1 from tick 3, row 2 on odd ticks; a stalled row rides along inactive
        runs = [r for r, go in ((0, True), (1, tick >= 3), (2, tick % 2 == 1)) if go and done[r] < T]
        stalled = [r for r in (2, 1, 0) if r not in runs and done[r] < T][:1]
        batch = runs[::-1] + stalled
        rows = torch.tensor(batch)
        active = torch.tensor([r in runs for r in batch])
        frame = torch.stack([codes[r, :, min(done[r], T - 1)] for r in batch])
        pcm = tiny.step(frame, state, rows=rows, active=active)
        assert pcm.shape == (len(batch), FRAME)
        for i, r in enumerate(batch):
            if active[i]:
                got[r].append(pcm[i])
                done[r] += 1
        tick += 1
    for r in range(3):  # measured <= 6.4e-7 (streaming vs offline, same machine; 2.7e-6 across kernels): x3 margin
        torch.testing.assert_close(torch.cat(got[r]), want[r], rtol=1e-5, atol=1e-5)
    for a, b in zip(spare, _state_tensors(state), strict=True):
        assert torch.equal(_row(a, 3), _row(b, 3))


def test_rows_none_and_decode_in_chunks(tiny):
    codes = _codes(2, 8, 5, seed=3)
    state = MimiDecoderState.allocate(tiny.cfg, rows=2)
    stream = torch.cat([tiny.step(codes[:, :, t], state) for t in range(5)], dim=1)
    torch.testing.assert_close(stream, tiny.decode(codes), rtol=1e-5, atol=1e-5)
    # decode is causal: a prefix of the codes gives a prefix of the audio
    torch.testing.assert_close(tiny.decode(codes[:, :, :2]), stream[:, : 2 * FRAME], rtol=1e-5, atol=1e-5)
    assert tiny.decode(codes[:, :, :0]).shape == (2, 0)


def test_decode_in_several_chunks_equals_one_pass(tiny, monkeypatch):
    codes = _codes(2, 8, 7, seed=4)
    whole = tiny.decode(codes)
    monkeypatch.setattr(mimi_module, "_DECODE_CHUNK", 3)  # chunks of 3, 3, 1 frames
    torch.testing.assert_close(tiny.decode(codes), whole, rtol=1e-5, atol=1e-5)


def test_inactive_row_state_stays_bit_identical(tiny):
    state = MimiDecoderState.allocate(tiny.cfg, rows=3)
    for t in range(3):  # fill the caches with something non-trivial first
        tiny.step(_codes(3, 8, seed=t), state)
    before = [t.clone() for t in _state_tensors(state)]
    tiny.step(_codes(3, 8, seed=9), state, active=torch.tensor([True, False, True]))
    for a, b in zip(before, _state_tensors(state), strict=True):
        assert torch.equal(_row(a, 1), _row(b, 1))
    assert not torch.equal(before[0][0], state.pos[0]) and not torch.equal(before[1][:, 2], state.keys[:, 2])
    assert state.pos.tolist() == [8, 6, 8]


def test_reset_rows_restarts_a_row(tiny):
    state = MimiDecoderState.allocate(tiny.cfg, rows=2)
    for t in range(4):
        tiny.step(_codes(2, 8, seed=t), state)
    other = [_row(t, 1).clone() for t in _state_tensors(state)]
    state.reset_rows([0])
    fresh = _codes(1, 8, 3, seed=7)
    got = torch.cat([tiny.step(fresh[:, :, t], state, rows=torch.tensor([0])) for t in range(3)], dim=1)
    torch.testing.assert_close(got, tiny.decode(fresh), rtol=1e-5, atol=1e-5)
    for a, b in zip(other, _state_tensors(state), strict=True):
        assert torch.equal(a, _row(b, 1))


def test_flush_latency_and_input_errors(tiny):
    state = MimiDecoderState.allocate(tiny.cfg, rows=3)
    assert tiny.latency_samples == 0
    assert tiny.flush(state).shape == (3, 0)
    assert tiny.flush(state, rows=torch.tensor([2])).shape == (1, 0)
    with pytest.raises(MimiInputError, match="integer codes"):
        tiny.step(_codes(2, 8, 1), state)
    with pytest.raises(MimiInputError, match="integer codes"):
        tiny.step(torch.zeros(2, 8), state)
    with pytest.raises(MimiInputError, match="mono"):
        tiny.encode(torch.zeros(2, 2, 100))


def test_random_weights_give_modest_finite_audio_and_varied_codes(tiny):
    pcm = tiny.decode(_codes(2, 8, 4, seed=5))
    assert torch.isfinite(pcm).all()
    assert 0.01 < pcm.std() < 0.5 and pcm.abs().max() < 3
    t = torch.arange(3 * FRAME + 123) / 24000
    wav = (0.3 * torch.sin(2 * torch.pi * (200 + 3000 * t) * t))[None, None]
    codes = tiny.encode(wav)
    assert codes.shape == (1, 8, 4) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048
    assert len(set(codes[0, 0].tolist())) > 1


@pytest.mark.slow
def test_full_random_checkpoint_loads_and_decodes():
    cfg = MimiConfig()
    with torch.device("meta"):
        model = Mimi(cfg)
    model.load_state_dict(random_state_dict(cfg, seed=0), strict=True, assign=True)
    state = MimiDecoderState.allocate(cfg, rows=1)
    pcm = torch.cat([model.step(_codes(1, 8, seed=t), state) for t in range(2)], dim=1)
    assert pcm.shape == (1, 2 * FRAME) and torch.isfinite(pcm).all()
    assert 0.01 < pcm.std() < 0.5


# ---------------------------------------------------------------------------------------------
# Reference goldens (tools/golden/make_mimi.py)


@pytest.fixture(scope="module")
def golden() -> tuple[Mimi, dict[str, torch.Tensor]]:
    with safe_open(str(GOLDEN), "pt") as f:
        assert json.loads(f.metadata()["config"]) == MimiConfig.tiny().to_dict(), "rerun tools/golden/make_mimi.py"
    data = load_file(GOLDEN)
    model = Mimi(MimiConfig.tiny()).eval()
    model.load_state_dict({k.removeprefix("sd."): v for k, v in data.items() if k.startswith("sd.")}, strict=True)
    return model, data


@pytest.mark.golden
def test_golden_decode_matches_reference_streaming(golden):
    model, g = golden
    codes, ref = g["codes"], g["decode_stream"]
    # atol: ours on AMD against the reference recorded on Intel differ by <= 2.7e-6: x3.7 margin.
    torch.testing.assert_close(model.decode(codes), ref, rtol=0, atol=1e-5)
    state = MimiDecoderState.allocate(model.cfg, rows=codes.shape[0])
    stream = torch.cat([model.step(codes[:, :, t], state) for t in range(codes.shape[2])], dim=1)
    torch.testing.assert_close(stream, ref, rtol=0, atol=1e-5)


@pytest.mark.golden
def test_golden_reference_offline_decode_differs_only_past_the_context(golden):
    """moshi's offline decode keeps one more key than its streaming ring from frame 2 on (context 5 steps)."""
    model, g = golden
    ours = model.decode(g["codes"])
    torch.testing.assert_close(ours[:, : 2 * FRAME], g["decode_offline"][:, : 2 * FRAME], rtol=0, atol=1e-5)
    assert (g["decode_offline"] - g["decode_stream"])[:, 2 * FRAME:].abs().max() > 1e-3


@pytest.mark.golden
def test_golden_encode(golden):
    model, g = golden
    torch.testing.assert_close(model._latent(g["wave"]), g["encode_latent"], rtol=0, atol=1e-5)
    assert torch.equal(model.encode(g["wave"]), g["encode_codes"])
