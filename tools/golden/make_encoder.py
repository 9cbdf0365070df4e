"""Golden outputs of the reference audio input path (NeMo mel, FastConformer, MLP adapter) from liquid-audio 1.3.0.

Runs in the reference venv only (Python 3.12, torch 2.9.1, liquid-audio 1.3.0, librosa); it imports nothing
from this repository, so the goldens cannot inherit our bugs:

    cd /work/main && /root/refvenv/venv/bin/python tools/golden/make_encoder.py

Writes (deterministic, CPU, each well under 1 MB):
- tests/golden/assets/encoder_mel.safetensors: waves (speech-like, sine, noise, lengths not multiples of 160,
  very short clips), the reference preprocessor's mel of each, and librosa's Slaney filterbank.
- tests/golden/assets/encoder_small.safetensors: a small ConformerEncoder (d_model 32, 4 heads, 2 layers,
  16 subsampling channels, feat_in 128, otherwise the LFM2-Audio structure) and MLP adapter with seeded random
  weights (BatchNorm running stats and pos_bias_u/v randomised too), a padded batch of 3 mels (the first is the
  reference mel of a short wave), and the reference outputs in fp32 and in bf16.
Tensor names: `conformer.*` / `audio_adapter.*` (official names), `input.*`, `output.*`, and `wave`, whose
reference mel is `input.mel[0]`; the configs are in the metadata as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import librosa
import liquid_audio
import torch
from liquid_audio.model.conformer.encoder import ConformerEncoder, ConformerEncoderConfig
from liquid_audio.model.conformer.processor import AudioToMelSpectrogramPreprocessor
from liquid_audio.model.mlp import MLP
from safetensors.torch import save_file

ASSETS = Path(__file__).resolve().parents[2] / "tests" / "golden" / "assets"

PREPROCESSOR = dict(sample_rate=16000, normalize="per_feature", window_size=0.025, window_stride=0.01, window="hann",
                    features=128, n_fft=512, log=True, frame_splicing=1, dither=1e-5, pad_to=0, pad_value=0.0)
ENCODER = ConformerEncoderConfig(
    feat_in=128, feat_out=-1, n_layers=2, d_model=32, subsampling="dw_striding", subsampling_factor=8,
    subsampling_conv_channels=16, causal_downsampling=False, reduction=None, reduction_position=None,
    reduction_factor=1, ff_expansion_factor=4, self_attention_model="rel_pos", n_heads=4, att_context_size=[-1, -1],
    xscaling=False, untie_biases=True, pos_emb_max_len=5000, conv_kernel_size=9, conv_norm_type="batch_norm",
    conv_context_size=None, dropout=0.1, dropout_pre_encoder=0.1, dropout_emb=0.0, dropout_att=0.1,
)
ADAPTER_OUT = 48


def speech_like(n: int, g: torch.Generator) -> torch.Tensor:
    """Voiced harmonics with a wandering pitch and syllable-rate envelope, plus breath noise."""
    t = torch.arange(n, dtype=torch.float64) / 16000
    f0 = 140 + 30 * torch.sin(2 * math.pi * 1.3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / 16000
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 - torch.cos(2 * math.pi * 4 * t)).clamp(min=0.05)
    x = 0.1 * env * voiced + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.float()


def mel_assets(g: torch.Generator) -> dict[str, torch.Tensor]:
    proc = AudioToMelSpectrogramPreprocessor(**PREPROCESSOR).eval()
    sine = 0.3 * torch.sin(2 * math.pi * 440 * torch.arange(8003, dtype=torch.float64) / 16000)
    waves = [
        speech_like(16037, g),
        sine.float(),
        0.05 * torch.randn(4321, generator=g),
        0.05 * torch.randn(330, generator=g),  # two real frames
        0.05 * torch.randn(100, generator=g),  # under one hop: the reference returns one zeroed frame
    ]
    out = {}
    for i, w in enumerate(waves):
        mel, _ = proc(w[None], torch.tensor([w.numel()]))
        out[f"wave.{i}"] = w.contiguous()
        out[f"mel.{i}"] = mel[0].contiguous()
    fb = librosa.filters.mel(sr=16000, n_fft=512, n_mels=128, fmin=0, fmax=8000, norm="slaney")
    out["filterbank"] = torch.from_numpy(fb).contiguous()
    return out


def randomise(model: torch.nn.Module, g: torch.Generator) -> None:
    """Default init for convs/linears (seeded); norms, BatchNorm stats and rel-pos biases away from identity."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_bias_u") or name.endswith("pos_bias_v"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm | torch.nn.BatchNorm1d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)


def encoder_assets(g: torch.Generator) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    enc = ConformerEncoder(**asdict(ENCODER)).eval()
    adapter = MLP(enc._feat_out, ADAPTER_OUT, [ADAPTER_OUT]).eval()
    randomise(enc, g)
    randomise(adapter, g)
    sd = {f"conformer.{k}": v for k, v in enc.state_dict().items()}
    sd |= {f"audio_adapter.{k}": v for k, v in adapter.state_dict().items()}

    proc = AudioToMelSpectrogramPreprocessor(**PREPROCESSOR).eval()
    wave = speech_like(13280, g)  # 0.83 s -> 84 mel frames
    wave_mel, _ = proc(wave[None], torch.tensor([wave.numel()]))
    mels = [wave_mel[0], torch.randn(128, 51, generator=g), torch.randn(128, 17, generator=g)]
    lengths = torch.tensor([m.shape[1] for m in mels])
    # As LFM2AudioModel._prefill: zero-padded batch, clips encoded independently.
    batch = torch.nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).mT.contiguous()

    with torch.no_grad():
        encoded, enc_lengths = enc(batch, lengths)
        valid = torch.arange(encoded.shape[-1]).unsqueeze(0) < enc_lengths.unsqueeze(1)
        adapted = adapter(encoded.mT[valid])
        enc16, adapter16 = enc.to(torch.bfloat16), adapter.to(torch.bfloat16)
        encoded16, _ = enc16(batch.to(torch.bfloat16), lengths)
        adapted16 = adapter16(encoded16.mT[valid])

    tensors = {k: v.contiguous() for k, v in sd.items()}
    tensors |= {
        "wave": wave,  # input.mel[0] is its reference mel
        "input.mel": batch, "input.lengths": lengths,
        "output.encoded": encoded.contiguous(), "output.lengths": enc_lengths,
        "output.adapted": adapted.contiguous(),
        "output.encoded_bf16": encoded16.contiguous(), "output.adapted_bf16": adapted16.contiguous(),
    }
    return tensors


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(20261201)
    meta = {"torch": torch.__version__, "liquid_audio": liquid_audio.__version__ if hasattr(liquid_audio, "__version__")
            else "1.3.0", "librosa": librosa.__version__, "preprocessor": json.dumps(PREPROCESSOR)}
    mel = mel_assets(g)
    save_file(mel, ASSETS / "encoder_mel.safetensors", metadata=meta)
    enc = encoder_assets(g)
    cfg = asdict(ENCODER)
    save_file(enc, ASSETS / "encoder_small.safetensors",
              metadata=meta | {"encoder": json.dumps(cfg), "adapter_out": str(ADAPTER_OUT)})
    for name in ("encoder_mel", "encoder_small"):
        path = ASSETS / f"{name}.safetensors"
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
    print("encoded", tuple(enc["output.encoded"].shape), "lengths", enc["output.lengths"].tolist())


if __name__ == "__main__":
    main()
