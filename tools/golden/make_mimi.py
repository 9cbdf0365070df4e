"""Golden outputs of the reference Mimi codec (liquid-audio 1.3.0's vendored moshi 0.2.12) for models/mimi.py.

Runs in the reference venv only (Python 3.12, torch 2.9.1, liquid-audio 1.3.0); it imports nothing from this
repository, so the goldens cannot inherit our bugs:

    cd /work/main && /root/refvenv/venv/bin/python tools/golden/make_mimi.py

Writes tests/golden/assets/mimi_tiny.safetensors (deterministic, CPU, about 0.7 MB): a tiny MimiModel built from
`liquid_audio.moshi` classes exactly as `get_mimi` builds the official one, with the sizes of
`MimiConfig.tiny()` (stored as JSON in the metadata under "config"; the test checks they still agree). Same
frame (1920 samples at 24 kHz, 12.5 Hz) and 8 codebooks of 2048 entries; dimension 12, 2 filters, 2 residual
layers, 2-layer transformers of width 16 with a context of 5 steps, so the decoder's ring KV cache wraps.
Tensors:
- `sd.*`: the state dict (official names). Seeded default init, then conv weights redrawn with std 1/sqrt(fan-in)
  (so the encoder's latent depends on its input), randomised layer scales (0.5..1.5, so the transformers
  matter), LayerNorm affines and codebooks (usage in 0.5..1.5, `_initialized` = 1).
- `codes` [2, 8, 5]; `decode_stream` [2, 9600]: `decode` frame by frame inside `streaming(2)`;
  `decode_offline` [2, 9600]: one `decode` call outside streaming. They differ from frame 2 on (see
  models/mimi.py: moshi's streaming ring drops the oldest key of a frame's first query).
- `wave` [2, 1, 4540] (chirps plus noise, not a whole number of frames), `encode_codes` [2, 8, 3] = `encode(wave)`
  and `encode_latent` [2, 12, 3], the unquantized latent (`_encode_to_unquantized_latent` of the padded wave).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from liquid_audio.moshi.models.compression import MimiModel
from liquid_audio.moshi.modules.seanet import SEANetDecoder, SEANetEncoder
from liquid_audio.moshi.modules.transformer import LayerScale, ProjectedTransformer
from liquid_audio.moshi.quantization import SplitResidualVectorQuantizer
from liquid_audio.moshi.quantization.core_vq import EuclideanCodebook
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "assets" / "mimi_tiny.safetensors"

# Must equal models.mimi.MimiConfig.tiny().to_dict().
CONFIG = dict(
    sample_rate=24000, frame_rate=12.5, dimension=12, n_filters=2, ratios=[8, 6, 5, 4], kernel_size=7,
    last_kernel_size=3, residual_kernel_size=3, n_residual_layers=2, dilation_base=2, compress=2, d_model=16,
    num_heads=2, num_layers=2, dim_feedforward=24, context=5, layer_scale=0.01, max_period=10000.0, n_q=8,
    n_q_semantic=1, bins=2048, codebook_dim=4, codebooks=8,
)


def build(c: dict) -> MimiModel:
    """moshi's get_mimi() with the sizes of `c` (its _seanet_kwargs/_transformer_kwargs/_quantizer_kwargs)."""
    seanet = dict(
        channels=1, dimension=c["dimension"], causal=True, n_filters=c["n_filters"],
        n_residual_layers=c["n_residual_layers"], activation="ELU", compress=c["compress"],
        dilation_base=c["dilation_base"], disable_norm_outer_blocks=0, kernel_size=c["kernel_size"],
        residual_kernel_size=c["residual_kernel_size"], last_kernel_size=c["last_kernel_size"], norm="none",
        pad_mode="constant", ratios=c["ratios"], true_skip=True,
    )
    transformer = dict(
        d_model=c["d_model"], num_heads=c["num_heads"], num_layers=c["num_layers"], causal=True,
        layer_scale=c["layer_scale"], context=c["context"], conv_layout=True, max_period=c["max_period"],
        gating="none", norm="layer_norm", positional_embedding="rope", dim_feedforward=c["dim_feedforward"],
        input_dimension=c["dimension"], output_dimensions=[c["dimension"]],
    )
    quantizer = dict(dimension=c["codebook_dim"], n_q=c["n_q"], n_q_semantic=c["n_q_semantic"], bins=c["bins"],
                     input_dimension=c["dimension"], output_dimension=c["dimension"])
    encoder = SEANetEncoder(**seanet)
    model = MimiModel(
        encoder, SEANetDecoder(**seanet), SplitResidualVectorQuantizer(**quantizer), channels=1,
        sample_rate=c["sample_rate"], frame_rate=c["frame_rate"],
        encoder_frame_rate=c["sample_rate"] / encoder.hop_length, causal=True, resample_method="conv",
        encoder_transformer=ProjectedTransformer(device="cpu", **transformer),
        decoder_transformer=ProjectedTransformer(device="cpu", **transformer),
    )
    model.eval()
    model.set_num_codebooks(c["codebooks"])
    return model


@torch.no_grad()
def randomise(model: MimiModel, g: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv1d):  # default init shrinks activations 3x per layer: keep them O(1)
            fan = m.in_channels // m.groups * m.kernel_size[0]
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan**0.5)
        elif isinstance(m, torch.nn.ConvTranspose1d):
            fan = m.in_channels // m.groups * m.kernel_size[0] / m.stride[0]
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan**0.5)
        elif isinstance(m, LayerScale):
            m.scale.copy_(0.5 + torch.rand(m.scale.shape, generator=g))
        elif isinstance(m, torch.nn.LayerNorm):
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, EuclideanCodebook):
            usage = 0.5 + torch.rand(m.cluster_usage.shape, generator=g)
            m.cluster_usage.copy_(usage)
            m.embedding_sum.copy_(torch.randn(m.embedding_sum.shape, generator=g) * usage[:, None])
            m._initialized.fill_(1.0)
            m.register_buffer("_embedding", None, persistent=False)  # drop any cached centroid table


@torch.no_grad()
def main() -> None:
    torch.manual_seed(1234)
    model = build(CONFIG)
    g = torch.Generator().manual_seed(1234)
    randomise(model, g)
    B, T = 2, 5
    codes = torch.randint(0, CONFIG["bins"], (B, CONFIG["codebooks"], T), generator=g)
    offline = model.decode(codes)
    with model.streaming(B):
        stream = torch.cat([model.decode(codes[:, :, t: t + 1]) for t in range(T)], dim=-1)
    n = 2 * 1920 + 700
    t = torch.arange(n) / CONFIG["sample_rate"]
    chirp = torch.sin(2 * torch.pi * (100 + 2000 * t) * t) * (0.05 + 0.5 * t / t[-1])  # rising pitch and level
    wave = torch.stack([chirp, -0.5 * chirp])[:, None] + 0.02 * torch.randn(B, 1, n, generator=g)
    latent = model._encode_to_unquantized_latent(torch.nn.functional.pad(wave, (0, -n % 1920)))
    enc = model.encode(wave)
    assert offline.shape == stream.shape == (B, 1, T * 1920), (offline.shape, stream.shape)
    assert enc.shape == (B, CONFIG["codebooks"], 3), enc.shape
    tensors = {f"sd.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update(codes=codes, decode_stream=stream[:, 0].contiguous(), decode_offline=offline[:, 0].contiguous(),
                   wave=wave, encode_latent=latent, encode_codes=enc)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT, metadata={"config": json.dumps(CONFIG), "torch": torch.__version__})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); stream vs offline max diff per frame:",
          [round(float((stream - offline)[..., t * 1920:(t + 1) * 1920].abs().max()), 6) for t in range(T)])


if __name__ == "__main__":
    main()
