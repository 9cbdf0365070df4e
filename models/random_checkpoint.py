"""Seeded random checkpoints in the official file layout (`lfm-audio make-checkpoint`).

`tiny` is a few MB: the embedded default the server runs on a machine without the real weights, and
what the tests run on. `full` has the published dimensions (1.5 B parameters) for benchmarks and
memory figures. Both go through exactly the loading code a real checkpoint goes through.
With random weights the speech is noise; `RANDOM_MARKER` in the directory says so to whoever loads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from models import detokenizer as lfm25
from models import mimi
from models.config import AUDIO_VOCAB, AudioModelConfig
from models.tokenizer import build_byte_tokenizer, write_tokenizer_files

__all__ = [
    "RANDOM_MARKER", "disk_dtype", "embedded_default", "full_config", "random_model_tensors", "tiny_config",
    "write_random_checkpoint",
]

RANDOM_MARKER = "lfm_audio_random.json"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"

_PREPROCESSOR = {
    "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
    "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-5,
    "pad_to": 0, "pad_value": 0.0,
}


def _encoder(n_layers: int, d_model: int, n_heads: int, channels: int) -> dict:
    return {
        "feat_in": 128, "feat_out": -1, "n_layers": n_layers, "d_model": d_model, "subsampling": "dw_striding",
        "subsampling_factor": 8, "subsampling_conv_channels": channels, "causal_downsampling": False,
        "reduction": None, "reduction_position": None, "reduction_factor": 1, "ff_expansion_factor": 4,
        "self_attention_model": "rel_pos", "n_heads": n_heads, "att_context_size": [-1, -1], "xscaling": False,
        "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
        "conv_context_size": None, "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0,
        "dropout_att": 0.1,
    }


def _lfm(vocab: int, hidden: int, ff: int, layers: int, heads: int, kv_heads: int, attn: list[int],
         multiple_of: int) -> dict:
    return {
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ff, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "layer_types": ["full_attention" if i in attn else "conv" for i in range(layers)],
        "norm_eps": 1e-5, "rope_theta": 1_000_000.0, "conv_L_cache": 3, "conv_bias": False,
        "block_multiple_of": multiple_of, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
        "max_position_embeddings": 128_000, "bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0,
    }


def _top(encoder: dict, lfm: dict, depthformer: dict) -> dict:
    return {
        "architectures": ["Lfm2AudioForConditionalGeneration"], "codebooks": 8, "tie_audio_embeddings": False,
        "semantic_codebook_factor": 100, "codebook_weight": "log", "interleaved_n_text": 6,
        "interleaved_n_audio": 12, "preprocessor": dict(_PREPROCESSOR), "encoder": encoder, "lfm": lfm,
        "depthformer": depthformer,
    }


def full_config() -> AudioModelConfig:
    """The published LFM2-Audio-1.5B dimensions (lfm2-audio-model.md 1.5)."""
    return AudioModelConfig.from_dict(_top(
        _encoder(17, 512, 8, 256),
        _lfm(65536, 2048, 12288, 16, 32, 8, [2, 5, 8, 10, 12, 14], 256),
        {"layers": 6, "dim": 1024, "tie": True},
    ))


def tiny_config() -> AudioModelConfig:
    """A few-MB model with the same structure. The reference can load it too: 128 mel bins, 8 codebooks,
    a depthformer dim that is a multiple of 64 (its 32 heads are fixed)."""
    return AudioModelConfig.from_dict(_top(
        _encoder(2, 64, 4, 16),
        _lfm(512, 64, 192, 4, 4, 2, [1, 3], 64),
        {"layers": 2, "dim": 64, "tie": False},
    ))


def _init_value(name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Random values that keep activations in a sane range, and that exercise every parameter (norm
    weights and biases are not left at 1 and 0, so a test would catch one that is ignored)."""
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if name.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    if name.endswith(("running_mean", "bias", "pos_bias_u", "pos_bias_v")):
        return torch.randn(shape, generator=gen) * 0.05
    if len(shape) == 1:  # norm weights
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return torch.randn(shape, generator=gen) / fan_in**0.5


def disk_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor has in the official model.safetensors: bf16, except the int64 buffers and
    the conformer's relative-position biases, which are stored in fp32 (shared/spec)."""
    if not dtype.is_floating_point:
        return dtype
    return torch.float32 if name.endswith(("pos_bias_u", "pos_bias_v")) else torch.bfloat16


def random_model_tensors(
    cfg: AudioModelConfig, seed: int, progress: Callable[[int], None] | None = None
) -> dict[str, Tensor]:
    """model.safetensors contents: official names and dtypes (see `disk_dtype`)."""
    from models.lfm2_audio import LFM2AudioModel

    with torch.device("meta"):
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in LFM2AudioModel(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for name in sorted(shapes):
        shape, _ = shapes[name]
        if name == "codebook_offsets":
            value = torch.arange(cfg.codebooks) * AUDIO_VOCAB
        elif name == "audio_loss_weights":
            value = (torch.linspace(1, 0, cfg.codebooks) * torch.log(torch.tensor(cfg.semantic_codebook_factor))).exp()
        else:
            value = _init_value(name, shape, gen)
        out[name] = value.to(disk_dtype(name, value.dtype))
        if progress is not None:
            progress(value.numel())
    if cfg.depthformer.tie:  # the reference shares these parameters; keep the stored copies identical
        for k in range(cfg.codebooks):
            out[f"depth_embeddings.{k}.to_logits.weight"] = out[f"depth_embeddings.{k}.embedding.weight"]
    if cfg.tie_audio_embeddings:
        out["audio_embedding.to_logits.weight"] = out["audio_embedding.embedding.weight"]
    return out


def write_random_checkpoint(
    directory: str | Path, size: str = "tiny", seed: int = 0, detokenizer: str = "both", progress: bool = False
) -> Path:
    """Write a checkpoint directory in the official layout; returns it."""
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    if detokenizer not in ("mimi", "lfm2.5", "both"):
        raise ValueError(f"detokenizer must be 'mimi', 'lfm2.5' or 'both', got {detokenizer!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = full_config() if size == "full" else tiny_config()
    bar = _progress_bar(cfg, size, detokenizer) if progress else None
    tick = bar.update if bar is not None else None

    (directory / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    vocab = cfg.lfm.vocab_size
    write_tokenizer_files(build_byte_tokenizer(vocab), directory)
    tensors = random_model_tensors(cfg, seed, tick)
    _save(tensors, directory / "model.safetensors")
    del tensors
    if detokenizer in ("mimi", "both"):
        mcfg = mimi.MimiConfig() if size == "full" else mimi.MimiConfig.tiny()
        weights = mimi.random_state_dict(mcfg, seed + 1)
        _save(weights, directory / MIMI_FILE)
        if tick:
            tick(sum(t.numel() for t in weights.values()))
        if mcfg != mimi.MimiConfig():
            (directory / "mimi_config.json").write_text(json.dumps(mcfg.to_dict(), indent=2))
    if detokenizer in ("lfm2.5", "both"):
        dcfg = lfm25.full_config() if size == "full" else lfm25.tiny_config()
        sub = directory / "audio_detokenizer"
        sub.mkdir(exist_ok=True)
        (sub / "config.json").write_text(json.dumps(lfm25.config_dict(dcfg), indent=2))
        weights = lfm25.random_state_dict(dcfg, seed + 2)
        _save(weights, sub / "model.safetensors")
        if tick:
            tick(sum(t.numel() for t in weights.values()))
    marker = {"size": size, "seed": seed, "detokenizer": detokenizer,
              "note": "random weights written by `lfm-audio make-checkpoint`: the model's speech is noise"}
    (directory / RANDOM_MARKER).write_text(json.dumps(marker, indent=2))
    if bar is not None:
        bar.close()
    return directory


def _save(tensors: dict[str, Tensor], path: Path) -> None:
    # safetensors refuses shared storage; the tied copies are written as separate tensors, as officially.
    seen: set[int] = set()
    unique = {}
    for k, v in tensors.items():
        unique[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    save_file({k: v.contiguous() for k, v in unique.items()}, str(path), metadata={"format": "pt"})


def _progress_bar(cfg: AudioModelConfig, size: str, detokenizer: str):
    from tqdm import tqdm

    from models.lfm2_audio import LFM2AudioModel

    with torch.device("meta"):
        total = sum(t.numel() for t in LFM2AudioModel(cfg).state_dict().values())
    if detokenizer in ("mimi", "both"):
        mcfg = mimi.MimiConfig() if size == "full" else mimi.MimiConfig.tiny()
        with torch.device("meta"):
            total += sum(t.numel() for t in mimi.Mimi(mcfg).state_dict().values())
    if detokenizer in ("lfm2.5", "both"):
        dcfg = lfm25.full_config() if size == "full" else lfm25.tiny_config()
        with torch.device("meta"):
            total += sum(t.numel() for t in lfm25.Detokenizer(dcfg).state_dict().values())
    return tqdm(total=total, unit="param", unit_scale=True, desc=f"writing {size} checkpoint")


EMBEDDED_DEFAULT_VERSION = 1  # bump when the tiny layout or its weights change, to re-create caches


def embedded_default(cache_dir: str | Path | None = None) -> Path:
    """The tiny random checkpoint used when no model is given: written once, then reused."""
    import os
    import shutil
    import tempfile

    root = Path(cache_dir or os.environ.get("LFM_AUDIO_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lfm-audio")
    target = root / f"tiny-seed0-v{EMBEDDED_DEFAULT_VERSION}"
    if (target / RANDOM_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".writing-"))
    try:
        write_random_checkpoint(tmp, "tiny", seed=0, detokenizer="both")
        try:
            tmp.rename(target)  # atomic: a concurrent writer may have won, which is fine
        except OSError:
            if not (target / RANDOM_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
