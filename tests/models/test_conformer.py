"""FastConformer encoder and audio adapter: golden against the reference, official names, batching.

Golden file: tests/golden/assets/encoder_small.safetensors, made by tools/golden/make_encoder.py (a small
encoder with the LFM2-Audio structure, seeded random weights, a padded batch of 3 clips).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from models.config import EncoderConfig, PreprocessorConfig
from models.conformer import AudioAdapter, ConformerEncoder, EncoderInputError, rel_pos_table
from models.mel import audio_positions, log_mel
from tests.conftest import SPEC_DIR
from tests.models.tolerances import BF16_MAX_RATIO, BF16_RMS_RATIO, ENCODER_FP32_TOL, MEL_ATOL

ASSET = Path(__file__).resolve().parents[1] / "golden" / "assets" / "encoder_small.safetensors"
SPEC_FILE = SPEC_DIR / "lfm2_audio_1.5b.model.safetensors.json"

FULL = dict(
    feat_in=128, feat_out=-1, n_layers=17, d_model=512, subsampling="dw_striding", subsampling_factor=8,
    subsampling_conv_channels=256, causal_downsampling=False, reduction=None, reduction_position=None,
    reduction_factor=1, ff_expansion_factor=4, self_attention_model="rel_pos", n_heads=8, att_context_size=[-1, -1],
    xscaling=False, untie_biases=True, pos_emb_max_len=5000, conv_kernel_size=9, conv_norm_type="batch_norm",
    conv_context_size=None, dropout=0.1, dropout_pre_encoder=0.1, dropout_emb=0.0, dropout_att=0.1,
)


def _small(cfg_overrides: dict | None = None) -> ConformerEncoder:
    cfg = EncoderConfig.from_dict({**FULL, "n_layers": 2, "d_model": 32, "n_heads": 4,
                                   "subsampling_conv_channels": 16, **(cfg_overrides or {})})
    enc = ConformerEncoder(cfg).eval()
    with torch.no_grad():  # move norms and BatchNorm away from identity so that masking mistakes show
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2)
        for name, p in enc.named_parameters():
            if "pos_bias" in name or name.endswith("norm_out.bias"):
                p.normal_(0, 0.5)
    return enc


@pytest.fixture(scope="module")
def golden():
    tensors = load_file(ASSET)
    with safe_open(ASSET, "pt") as f:
        meta = f.metadata()
    cfg = EncoderConfig.from_dict(json.loads(meta["encoder"]))
    enc = ConformerEncoder(cfg).eval()
    adapter = AudioAdapter(cfg.d_model, int(meta["adapter_out"])).eval()
    enc.load_state_dict({k.removeprefix("conformer."): v for k, v in tensors.items() if k.startswith("conformer.")})
    adapter.load_state_dict(
        {k.removeprefix("audio_adapter."): v for k, v in tensors.items() if k.startswith("audio_adapter.")}
    )
    return enc, adapter, tensors, json.loads(meta["preprocessor"])


def _valid(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t)[None] < lengths[:, None]


@pytest.mark.golden
def test_golden_fp32(golden):
    enc, adapter, g, _ = golden
    with torch.no_grad():
        out, lengths = enc(g["input.mel"], g["input.lengths"])
        assert lengths.dtype == torch.int64 and lengths.tolist() == g["output.lengths"].tolist() == [11, 7, 3]
        # All frames, padded ones included: those follow the reference too.
        torch.testing.assert_close(out, g["output.encoded"], atol=ENCODER_FP32_TOL, rtol=ENCODER_FP32_TOL)
        adapted = adapter(out.mT[_valid(lengths, out.shape[-1])])
        torch.testing.assert_close(adapted, g["output.adapted"], atol=ENCODER_FP32_TOL, rtol=ENCODER_FP32_TOL)


def _rms(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


@pytest.mark.golden
def test_golden_bf16(golden):
    """In the model dtype our encoder is as accurate as the reference's bf16 run: its error against the fp32
    answer has the reference's size. Which bits match depends on the matmul kernel (oneDNN or not), so bits
    are not compared; fp32 math rounded to bf16 (far more accurate) or a bug (far less) leave the band."""
    enc, adapter, g, _ = golden
    enc16 = ConformerEncoder(enc.cfg).eval()
    enc16.load_state_dict(enc.state_dict())
    enc16.to(torch.bfloat16)
    ad16 = AudioAdapter(adapter.model[0].normalized_shape[0], adapter.model[1].out_features).eval()
    ad16.load_state_dict(adapter.state_dict())
    ad16.to(torch.bfloat16)
    with torch.no_grad():
        out, lengths = enc16(g["input.mel"].bfloat16(), g["input.lengths"])
        adapted = ad16(out.mT[_valid(lengths, out.shape[-1])])
    for name, ours in (("encoded", out), ("adapted", adapted)):
        ref16, ref32 = g[f"output.{name}_bf16"], g[f"output.{name}"]
        assert ours.dtype == ref16.dtype == torch.bfloat16
        err, ref_err = ours.float() - ref32, ref16.float() - ref32
        rms_ratio = _rms(err) / _rms(ref_err)
        low, high = BF16_RMS_RATIO
        assert low <= rms_ratio <= high, f"{name}: RMS error {rms_ratio:.2f}x the reference's"
        max_ratio = err.abs().max().item() / ref_err.abs().max().item()
        assert max_ratio <= BF16_MAX_RATIO, f"{name}: worst error {max_ratio:.2f}x the reference's"


@pytest.mark.golden
def test_golden_from_wave(golden):
    """wave -> log_mel -> encode_clips alone == the reference's padded-batch output for that clip."""
    enc, _, g, pre = golden
    mel = log_mel(g["wave"], PreprocessorConfig.from_dict(pre))
    n = int(g["input.lengths"][0])
    torch.testing.assert_close(mel, g["input.mel"][0, :, :n], atol=MEL_ATOL, rtol=0)
    (feats,) = enc.encode_clips([mel])
    assert feats.shape == (audio_positions(mel.shape[1]), enc.cfg.d_model)
    ref = g["output.encoded"][0, :, : feats.shape[0]].T
    torch.testing.assert_close(feats, ref, atol=ENCODER_FP32_TOL, rtol=ENCODER_FP32_TOL)


def test_batch_equals_each_alone():
    enc = _small()
    mels = [torch.randn(128, t) for t in (57, 9, 1, 33)]
    batched = enc.encode_clips(mels)
    assert [f.shape[0] for f in batched] == [audio_positions(m.shape[1]) for m in mels] == [8, 2, 1, 5]
    for m, f in zip(mels, batched, strict=True):
        (alone,) = enc.encode_clips([m])
        torch.testing.assert_close(f, alone, atol=1e-5, rtol=1e-5)


def test_padding_content_is_ignored():
    enc = _small()
    mel = torch.randn(2, 128, 40)
    lengths = torch.tensor([40, 23])
    noisy = mel.clone()
    noisy[1, :, 23:] = 1e3 * torch.randn(128, 17)
    with torch.no_grad():
        a, la = enc(mel, lengths)
        b, lb = enc(noisy, lengths)
    assert la.tolist() == lb.tolist() == [5, 3]
    torch.testing.assert_close(a[1, :, :3], b[1, :, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)


def test_rel_pos_table():
    table = rel_pos_table(6, 8)
    assert table.shape == (11, 8) and table.dtype == torch.float32
    torch.testing.assert_close(table[5], torch.tensor([0.0, 1.0] * 4))  # position 0: sin 0, cos 0
    p, i = 3.0, 2  # row 2 = position +3; column pair 2 has frequency 10000^(-4/8)
    torch.testing.assert_close(table[5 - 3, 2 * i], torch.sin(torch.tensor(p * 10000 ** (-2 * i / 8))))
    torch.testing.assert_close(table[5 + 3, 2 * i + 1], torch.cos(torch.tensor(-p * 10000 ** (-2 * i / 8))))
    enc = _small()
    torch.testing.assert_close(enc.positions(4, torch.device("cpu")), rel_pos_table(4, 32))


def test_rejects_bad_mels():
    enc = _small()
    with pytest.raises(EncoderInputError, match="log_mel"):
        enc.encode_clips([torch.randn(80, 20)])
    with pytest.raises(EncoderInputError):
        enc.encode_clips([torch.randn(128, 0)])
    assert enc.encode_clips([]) == []


def test_full_size_names_and_shapes():
    with torch.device("meta"):
        enc = ConformerEncoder(EncoderConfig.from_dict(FULL))
        adapter = AudioAdapter(512, 2048)
    names = {f"conformer.{k}": tuple(v.shape) for k, v in enc.state_dict().items()}
    names |= {f"audio_adapter.{k}": tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert sum(k.startswith("conformer.") for k in names) == 692
    assert names["conformer.pre_encode.out.weight"] == (512, 4096)
    assert names["conformer.layers.16.self_attn.pos_bias_u"] == (8, 64)
    assert "conformer.pos_enc.pe" not in names
    assert enc.state_dict()["layers.0.conv.batch_norm.num_batches_tracked"].dtype == torch.int64
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == 109_548_544 and sum(p.numel() for p in adapter.parameters()) == 5_248_000  # model doc 2.1
    spec = json.loads(SPEC_FILE.read_text())["tensors"]
    expected = {t["name"]: tuple(t["shape"]) for t in spec if t["name"].startswith(("conformer.", "audio_adapter."))}
    assert names == expected
