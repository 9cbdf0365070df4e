"""Mel front end: golden against the reference's NeMo preprocessor and librosa's filterbank, plus shape facts.

Golden file: tests/golden/assets/encoder_mel.safetensors, made by tools/golden/make_encoder.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from models.config import PreprocessorConfig
from models.mel import MelInputError, audio_positions, log_mel, mel_filterbank, n_mel_frames
from tests.models.tolerances import MEL_ATOL

ASSET = Path(__file__).resolve().parents[1] / "golden" / "assets" / "encoder_mel.safetensors"

CFG = PreprocessorConfig.from_dict(dict(
    sample_rate=16000, normalize="per_feature", window_size=0.025, window_stride=0.01, window="hann", features=128,
    n_fft=512, log=True, frame_splicing=1, dither=1e-5, pad_to=0, pad_value=0.0,
))


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    with safe_open(ASSET, "pt") as f:
        assert json.loads(f.metadata()["preprocessor"]) == dataclasses.asdict(CFG)  # goldens made for this config
    return load_file(ASSET)


@pytest.mark.golden
@pytest.mark.parametrize("i", range(5))
def test_matches_reference_preprocessor(golden, i):
    wave, ref = golden[f"wave.{i}"], golden[f"mel.{i}"]
    mel = log_mel(wave, CFG)
    assert mel.shape == ref.shape == (128, wave.numel() // 160 + 1)
    assert mel.dtype == torch.float32
    torch.testing.assert_close(mel, ref, atol=MEL_ATOL, rtol=0)


@pytest.mark.golden
def test_golden_covers_the_edge_lengths(golden):
    lengths = [golden[f"wave.{i}"].numel() for i in range(5)]
    assert any(n % 160 for n in lengths) and min(lengths) < 160 and any(160 < n < 480 for n in lengths)


@pytest.mark.golden
def test_filterbank_matches_librosa(golden):
    fb = mel_filterbank(16000, 512, 128)
    assert fb.shape == (128, 257) and fb.dtype == torch.float32
    torch.testing.assert_close(fb, golden["filterbank"], atol=1e-9, rtol=1e-6)


def test_filterbank_is_slaney_area_normalised():
    fb = mel_filterbank(16000, 512, 128).double()
    hz = torch.linspace(0, 8000, 257, dtype=torch.float64)
    # Each triangle has area ~1 in Hz (peak 2/width times half the base): the Slaney normalisation.
    area = torch.trapezoid(fb, hz, dim=1)
    # The FFT grid samples each triangle coarsely (low bands are narrower than a bin): check on average.
    assert abs(area[64:].mean() - 1) < 0.01 and torch.all((area[64:] - 1).abs() < 0.15), area
    peaks = fb.argmax(1)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the band index


def test_shape_and_terminal_frame():
    wave = 0.1 * torch.randn(16000 + 37)
    mel = log_mel(wave, CFG)
    assert mel.shape == (128, n_mel_frames(wave.numel(), CFG)) == (128, 101)
    assert torch.all(mel[:, -1] == 0)  # the centred frame past the end is kept and zeroed
    assert mel[:, :-1].abs().sum() > 0


def test_per_feature_normalisation():
    wave = torch.sin(torch.arange(8000) * 0.05) * torch.linspace(0.01, 0.5, 8000) + 0.01 * torch.randn(8000)
    mel = log_mel(wave, CFG)[:, :-1]
    torch.testing.assert_close(mel.mean(1), torch.zeros(128), atol=1e-4, rtol=0)
    std = mel.std(1)  # Bessel-corrected, like the reference; the 1e-5 guard shows only for flat features
    torch.testing.assert_close(std, torch.ones(128), atol=1e-3, rtol=0)


def test_gain_invariance_away_from_the_log_guard():
    # A louder clip gives the same normalised mel: log(g^2 P) only shifts each feature.
    # The lowest bands hold so little power (pre-emphasis removes DC) that the 2^-24 guard matters there.
    # Tolerance: the guard's effect on bands >= 32 is 1.90e-3 for this (seeded) clip, the same in float64, so it
    # is math, not rounding; each fp32 mel is within 2.2e-5 of float64, so any kernel gives <= 1.95e-3.
    wave = 0.05 * torch.randn(4000)
    torch.testing.assert_close(log_mel(4 * wave, CFG)[32:], log_mel(wave, CFG)[32:], atol=2e-3, rtol=0)


def test_short_clips():
    assert torch.all(log_mel(0.1 * torch.randn(100), CFG) == 0)  # under one hop: one zeroed frame, as the reference
    assert log_mel(0.1 * torch.randn(100), CFG).shape == (128, 1)
    one = log_mel(0.1 * torch.randn(200), CFG)  # one real frame: std 0 -> guard only, values 0
    assert one.shape == (128, 2) and torch.all(one == 0)


def test_audio_positions():
    assert [audio_positions(t) for t in (1, 8, 9, 16, 17, 401)] == [1, 1, 2, 2, 3, 51]
    for n in (160, 4321, 64000):
        t = n_mel_frames(n, CFG)
        assert audio_positions(t) == math.ceil((n // 160 + 1) / 8)


def test_rejects_bad_input():
    with pytest.raises(MelInputError, match="once per clip"):
        log_mel(torch.randn(2, 1600), CFG)
    with pytest.raises(MelInputError, match="empty"):
        log_mel(torch.zeros(0), CFG)
    with pytest.raises(MelInputError):
        log_mel(torch.zeros(1600, dtype=torch.int16), CFG)
