"""Log-mel front end: NeMo's AudioToMelSpectrogramPreprocessor in eval mode (lfm2-audio-model.md 2.3).

One clip per call, as the reference does (`ChatState.add_audio`): the per-feature normalisation uses
statistics of that clip alone, so clips must never be batched through this function.

    mel = log_mel(wave_16k, cfg)          # [features, N // hop + 1], float32
    n = audio_positions(mel.shape[1])     # LFM positions the clip takes (one per 80 ms)

The last frame (the centred STFT frame past the end) is kept and zeroed, like the reference's
`pad_value`: the encoder consumes it and `audio_positions` counts it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from models.config import PreprocessorConfig

__all__ = ["MelInputError", "audio_positions", "log_mel", "mel_filterbank", "n_mel_frames"]

# NeMo FilterbankFeatures defaults that LFM2-Audio's config leaves untouched.
PREEMPH = 0.97
LOG_GUARD = 2.0**-24
STD_GUARD = 1e-5


class MelInputError(ValueError):
    """A waveform that the mel front end cannot take."""


def n_mel_frames(n_samples: int, cfg: PreprocessorConfig) -> int:
    """Mel frames for a clip of `n_samples` at 16 kHz, terminal frame included."""
    return n_samples // cfg.hop_length + 1


def audio_positions(n_mel_frames: int) -> int:
    """LFM positions (encoder frames) for a mel of `n_mel_frames`: three stride-2 convs = ceil(T / 8)."""
    return -(-n_mel_frames // 8)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney (Auditory Toolbox) scale: linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-30) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """Slaney-scale, Slaney-normalised triangular filters, [n_mels, n_fft // 2 + 1] float32.

    Same values as `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, norm="slaney")`: the
    triangles are computed in float64 and rounded to float32 before the area normalisation, which
    is applied in float64 and rounded again (librosa writes into a float32 array in between).
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(fmin)), _hz_to_mel(np.float64(fmax)), n_mels + 2))
    width = np.diff(edges)
    dist = edges[:, None] - bins[None, :]  # [n_mels + 2, bins]
    rising = -dist[:-2] / width[:-1, None]
    falling = dist[2:] / width[1:, None]
    tri = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (edges[2:] - edges[:-2])
    return torch.from_numpy((tri * area[:, None]).astype(np.float32))


@functools.cache
def _tables(cfg: PreprocessorConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    window = torch.hann_window(cfg.win_length, periodic=False, dtype=torch.float32, device=device)  # symmetric
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.features).to(device)
    return window, fb


def log_mel(wave: Tensor, cfg: PreprocessorConfig) -> Tensor:
    """Normalised log-mel features of one 16 kHz mono clip: [N] -> [cfg.features, N // hop + 1] float32."""
    if wave.dim() != 1 or not wave.is_floating_point():
        raise MelInputError(f"log_mel takes one mono float clip of shape [N], got {tuple(wave.shape)} {wave.dtype}; "
                            "split channels/batches and call once per clip")
    if wave.numel() == 0:
        raise MelInputError("empty clip: there is nothing to encode; skip it")
    assert cfg.normalize == "per_feature" and cfg.log and cfg.frame_splicing == 1 and cfg.pad_to == 0, cfg
    window, fb = _tables(cfg, wave.device)
    x = wave.float()
    n = x.numel() // cfg.hop_length  # frames that see real audio; the extra centred frame does not count

    x = torch.cat([x[:1], x[1:] - PREEMPH * x[:-1]])
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                      center=True, pad_mode="constant", return_complex=True)
    # |X| then squared, not re^2 + im^2: the same rounding as the reference.
    power = torch.view_as_real(spec).pow(2).sum(-1).sqrt().pow(2)
    mel = torch.log(fb @ power + LOG_GUARD)
    t = mel.shape[1]
    assert t == n + 1, (t, n)

    # Per-feature statistics over the n real frames; Bessel-corrected std, guard added to the std.
    valid = torch.arange(t, device=mel.device) < n
    mean = torch.where(valid, mel, 0.0).sum(1, keepdim=True) / max(n, 1)
    dev = torch.where(valid, mel - mean, 0.0)
    std = torch.sqrt(dev.pow(2).sum(1, keepdim=True) / (n - 1)) if n > 1 else torch.zeros_like(mean)
    # n == 0 (under one hop): the reference's mean is NaN and every frame is then zeroed; same result here.
    mel = (mel - mean) / (std + STD_GUARD)
    return torch.where(valid, mel, cfg.pad_value)

