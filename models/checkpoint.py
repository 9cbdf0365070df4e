"""Loading a checkpoint directory in the official layout, strictly.

    config.json, model.safetensors, tokenizer.json (+ HF tokenizer files),
    tokenizer-e351c8d8-checkpoint125.safetensors (Mimi), audio_detokenizer/{config.json,model.safetensors}

Every expected tensor must be present with its shape, and nothing unexpected may be there: the
reference's loader is not strict, so a misnamed tensor there silently keeps a random value; here it is
an error that names it. Weights stored in bf16 load into the chosen dtype (fp32 by default on CPU,
bf16 on CUDA). A Hub id is resolved with `huggingface_hub` where there is internet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from models import detokenizer as lfm25
from models import mimi
from models.config import AudioModelConfig
from models.lfm2_audio import LFM2AudioModel
from models.quant import check_weights, quantize_model
from models.random_checkpoint import MIMI_FILE, RANDOM_MARKER
from models.tokenizer import TextTokenizer

__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointHeader", "default_dtype", "load_checkpoint", "load_dtype",
    "load_header", "load_strict", "resolve", "tensors_digest",
]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint directory that does not match what this engine implements."""


@dataclass
class Checkpoint:
    directory: Path
    config: AudioModelConfig
    model: LFM2AudioModel
    tokenizer: TextTokenizer
    mimi: mimi.Mimi | None
    detokenizer: lfm25.Detokenizer | None
    random: dict | None  # the make-checkpoint marker, when the weights are seeded noise

    @property
    def name(self) -> str:
        return self.directory.name


def default_dtype(device: torch.device | str) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_dtype(device: torch.device | str, dtype: torch.dtype | None, weights: str) -> torch.dtype:
    """The weights' dtype when none is asked for: bf16 activations under quantized weights, else the device's."""
    return dtype or (torch.bfloat16 if weights != "dense" else default_dtype(device))


def resolve(model: str | Path, *, revision: str | None = None) -> Path:
    """A local directory as is; anything else is a Hugging Face Hub repo id, downloaded (with the
    Hub's progress bars) into its cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(model).startswith((".", "/", "~")):
        raise CheckpointError(f"{model}: not a checkpoint directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise CheckpointError(f"{model} is not a local directory, and huggingface_hub is not installed to "
                              "download it (pip install huggingface_hub)") from e
    return Path(snapshot_download(str(model), revision=revision))


def tensors_digest(path: str | Path) -> str:
    """sha256 over the names and bytes of every tensor of a safetensors file (independent of how the
    header was serialised): identifies the weights a golden file was recorded with."""
    import hashlib

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            h.update(name.encode())
            h.update(f.get_tensor(name).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_strict(module: nn.Module, path: Path, *, device: torch.device | str, dtype: torch.dtype) -> None:
    """Load `path` into `module` (built on the meta device), checking names and shapes first."""
    expected = module.state_dict()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing = sorted(set(expected) - keys)
        unexpected = sorted(keys - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: tensor names do not match this model: missing {_few(missing)}, unexpected {_few(unexpected)}"
            )
        loaded = {}
        for name in sorted(keys):
            t = f.get_tensor(name)
            if tuple(t.shape) != tuple(expected[name].shape):
                raise CheckpointError(f"{path}: {name} has shape {tuple(t.shape)}, expected "
                                      f"{tuple(expected[name].shape)}")
            target = dtype if t.is_floating_point() else t.dtype
            loaded[name] = t.to(device=device, dtype=target)
    module.load_state_dict(loaded, strict=True, assign=True)


def _few(names: list[str]) -> str:
    return "[]" if not names else f"{names[:5]}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@dataclass
class CheckpointHeader:
    """What schedules a model's work without running it: config, tokenizer, where it lives. The weights
    stay wherever the runner loads them (streaming/worker.py: another process)."""

    directory: Path
    config: AudioModelConfig
    tokenizer: TextTokenizer
    random: dict | None

    @property
    def name(self) -> str:
        return self.directory.name


def load_header(model: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                weights: str = "dense") -> CheckpointHeader:
    """The checks load_checkpoint makes before it reads a weight, and the config and tokenizer."""
    directory = resolve(model)
    check_weights(weights, load_dtype(device, dtype, weights), device)
    cfg = AudioModelConfig.from_checkpoint(directory)
    for required in ("model.safetensors", "tokenizer.json"):
        if not (directory / required).is_file():
            raise CheckpointError(f"{directory}: {required} is missing")
    if not (directory / MIMI_FILE).is_file() and not (directory / "audio_detokenizer" / "model.safetensors").is_file():
        raise CheckpointError(f"{directory}: no audio decoder found (need {MIMI_FILE} or audio_detokenizer/)")
    marker = directory / RANDOM_MARKER
    return CheckpointHeader(directory, cfg, TextTokenizer.from_dir(directory),
                            json.loads(marker.read_text()) if marker.is_file() else None)


def load_checkpoint(
    model: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    decoders: tuple[str, ...] = ("mimi", "lfm2.5"),
    weights: str = "dense",
) -> Checkpoint:
    """Load the model, tokenizer and whichever of the requested audio decoders the directory has.
    The decoders always run in fp32 (as the reference runs them). weights: "dense", or "int8"/"int4"
    for the decode path's linear layers (models/quant.py; bf16 activations, CPU)."""
    header = load_header(model, device=device, dtype=dtype, weights=weights)
    directory, cfg = header.directory, header.config
    dtype = load_dtype(device, dtype, weights)
    with torch.device("meta"):
        net = LFM2AudioModel(cfg)
    load_strict(net, directory / "model.safetensors", device=device, dtype=dtype)
    net.eval()
    _check_ties(net, cfg)
    if dtype != torch.float32:  # fp32 is the parity dtype: its module tree and rounding stay the reference's
        net.depthformer.fuse_feed_forward()
    quantize_model(net, weights)

    codec = None
    if "mimi" in decoders and (directory / MIMI_FILE).is_file():
        mcfg = mimi.MimiConfig.from_dir(directory)
        with torch.device("meta"):
            codec = mimi.Mimi(mcfg)
        load_strict(codec, directory / MIMI_FILE, device=device, dtype=torch.float32)
        codec.eval()
    detok = None
    if "lfm2.5" in decoders and (directory / "audio_detokenizer" / "model.safetensors").is_file():
        dcfg = lfm25.load_config(json.loads((directory / "audio_detokenizer" / "config.json").read_text()))
        with torch.device("meta"):
            detok = lfm25.Detokenizer(dcfg)
        load_strict(detok, directory / "audio_detokenizer" / "model.safetensors", device=device, dtype=torch.float32)
        detok.eval()
    if codec is None and detok is None:
        raise CheckpointError(f"{directory}: no audio decoder found (need {MIMI_FILE} or audio_detokenizer/)")

    return Checkpoint(directory, cfg, net, header.tokenizer, codec, detok, header.random)


def _check_ties(net: LFM2AudioModel, cfg: AudioModelConfig) -> None:
    # The reference shares tied parameters, so whichever stored copy loads last wins; they should match.
    if cfg.depthformer.tie:
        for k, emb in enumerate(net.depth_embeddings):
            if not torch.equal(emb.embedding.weight, emb.to_logits.weight):
                log.warning("depthformer.tie is true but depth_embeddings.%d.to_logits differs from its "
                            "embedding; using the stored to_logits", k)
