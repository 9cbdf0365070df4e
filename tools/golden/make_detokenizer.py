"""Record golden outputs of the reference LFM2.5 detokenizer (liquid-audio 1.3.0) for tests/models/test_detokenizer.py.

Run in the reference venv (Python 3.12, torch 2.9.1, liquid-audio 1.3.0, transformers 5.x), from the repo root:

    PYTHONPATH=. /root/refvenv/venv/bin/python tools/golden/make_detokenizer.py

It writes tests/golden/assets/detokenizer_golden.safetensors (about 2.5 MB) holding the config.json text
(written by our `config_dict`), the weights, random codes [2, 8, 10] and the reference waveform [2, 19200].

The reference is fixed at width 512, so the model is kept small elsewhere: 2 layers (conv, sliding
attention), FFN 32, vocab 8. To keep the file small the weights are random values rounded to int8 times a
power of two per tensor (exact in fp32, and the reference runs on exactly those values), and `emb.emb` keeps
only the rows the codes use (the others are zero in the reference too).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import liquid_audio
import torch
import transformers
from liquid_audio.detokenizer import LFM2AudioDetokenizer
from safetensors.torch import save_file
from transformers import Lfm2Config

from models.detokenizer import CODEBOOKS, CODES, config_dict, load_config, random_state_dict

OUT = Path(__file__).resolve().parents[2] / "tests/golden/assets/detokenizer_golden.safetensors"
SEED = 1234
B, T = 2, 10  # 60 backbone positions: the 30-step window slides


def small_config():
    return load_config({
        "vocab_size": 8, "hidden_size": 512, "intermediate_size": 32, "block_auto_adjust_ff_dim": False,
        "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 4,
        "layer_types": ["conv", "sliding_attention"], "sliding_window": 30,
    })


def to_int8(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """w ~= q * 2**e with q int8: returns (q, e)."""
    e = math.ceil(math.log2(w.abs().max().item() / 127))
    return torch.round(w / 2.0**e).clamp(-127, 127).to(torch.int8), e


def reference(cfg_json: dict, weights: dict[str, torch.Tensor]) -> LFM2AudioDetokenizer:
    # As liquid_audio.processor's `audio_detokenizer` property, minus `.cuda()`.
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(json.dumps(cfg_json))
        hf = Lfm2Config.from_pretrained(path)
    hf.layer_types = ["full_attention" if t == "sliding_attention" else t for t in hf.layer_types]
    det = LFM2AudioDetokenizer(hf).eval()
    det.load_state_dict(weights)  # strict
    return det


def main() -> None:
    torch.manual_seed(SEED)
    cfg = small_config()
    cfg_json = config_dict(cfg)
    g = torch.Generator().manual_seed(SEED)
    codes = torch.randint(0, CODES, (B, CODEBOOKS, T), generator=g)
    used = torch.unique(codes + (torch.arange(CODEBOOKS) * CODES)[:, None])

    tensors: dict[str, torch.Tensor] = {"codes": codes}
    exponents: dict[str, int] = {}
    weights: dict[str, torch.Tensor] = {}
    for name, w in random_state_dict(cfg, SEED).items():
        if w.dim() == 1:
            tensors[f"w.{name}"] = w
            weights[name] = w
            continue
        q, e = to_int8(w)
        exponents[name] = e
        weights[name] = q.float() * 2.0**e
        if name == "emb.emb.weight":
            keep = torch.zeros_like(weights[name])
            keep[used] = weights[name][used]
            weights[name] = keep
            tensors["emb_rows"] = used
            q = q[used]
        tensors[f"q.{name}"] = q.contiguous()

    det = reference(cfg_json, weights)
    with torch.no_grad():
        audio = det(codes)
        # The window must matter here, or the golden would not test it: compare with an unbounded one.
        det.sliding_window_size = 10**9
        unbounded = det(codes)
    assert audio.shape == (B, T * 1920) and torch.isfinite(audio).all()
    assert (audio - unbounded).abs().max() > 1e-3, "the sliding window had no effect"
    tensors["audio"] = audio.contiguous()

    meta = {
        "config": json.dumps(cfg_json),
        "exponents": json.dumps(exponents),
        "versions": json.dumps({"liquid_audio": getattr(liquid_audio, "__version__", "1.3.0"),
                                "torch": torch.__version__, "transformers": transformers.__version__}),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB); |audio| max {audio.abs().max():.4f}, "
          f"rms {audio.square().mean().sqrt():.4f}; window effect {(audio - unbounded).abs().max():.4f}")


if __name__ == "__main__":
    main()
