"""Model configuration: frozen dataclasses read from a checkpoint's `config.json`.

The top-level schema is the official LFM2-Audio one (lfm2-audio-model.md section 1.5). Keys we do
not know are an error, never a silent default: a checkpoint we misread would otherwise produce
plausible noise. Derived sizes are properties.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AudioModelConfig",
    "ConfigError",
    "DepthformerConfig",
    "EncoderConfig",
    "LFM2Config",
    "PreprocessorConfig",
]

AUDIO_VOCAB = 2049  # 2048 Mimi codes + end-of-audio
EOA = 2048


class ConfigError(ValueError):
    """A config.json that does not match the schema this engine implements."""


def _strict_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return data


@dataclass(frozen=True, kw_only=True)
class PreprocessorConfig:
    """NeMo AudioToMelSpectrogramPreprocessor settings (all 12 keys are required, as in the reference)."""

    sample_rate: int
    normalize: str
    window_size: float
    window_stride: float
    window: str
    features: int
    n_fft: int
    log: bool
    frame_splicing: int
    dither: float
    pad_to: int
    pad_value: float

    @property
    def win_length(self) -> int:
        return int(self.window_size * self.sample_rate)

    @property
    def hop_length(self) -> int:
        return int(self.window_stride * self.sample_rate)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessorConfig:
        cfg = cls(**_strict_fields(cls, data, "preprocessor"))
        if (cfg.normalize, cfg.window, cfg.log, cfg.frame_splicing, cfg.pad_to) != ("per_feature", "hann", True, 1, 0):
            raise ConfigError(f"preprocessor: only the NeMo per_feature/hann/log recipe without padding is supported, "
                              f"got {cfg}")
        return cfg


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """FastConformer settings (the 25 keys of the reference's ConformerEncoderConfig)."""

    feat_in: int
    feat_out: int
    n_layers: int
    d_model: int
    subsampling: str
    subsampling_factor: int
    subsampling_conv_channels: int
    causal_downsampling: bool
    reduction: str | None
    reduction_position: int | None
    reduction_factor: int
    ff_expansion_factor: int
    self_attention_model: str
    n_heads: int
    att_context_size: tuple[int, ...]
    xscaling: bool
    untie_biases: bool
    pos_emb_max_len: int
    conv_kernel_size: int
    conv_norm_type: str
    conv_context_size: tuple[int, ...] | None
    dropout: float
    dropout_pre_encoder: float
    dropout_emb: float
    dropout_att: float

    @property
    def out_dim(self) -> int:
        return self.d_model if self.feat_out <= 0 else self.feat_out

    @property
    def subsampling_stages(self) -> int:
        return int(math.log2(self.subsampling_factor))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        data = dict(_strict_fields(cls, data, "encoder"))
        data["att_context_size"] = tuple(data["att_context_size"])
        if data["conv_context_size"] is not None:
            data["conv_context_size"] = tuple(data["conv_context_size"])
        cfg = cls(**data)
        supported = (
            cfg.subsampling == "dw_striding" and not cfg.causal_downsampling and cfg.reduction is None
            and cfg.self_attention_model == "rel_pos" and tuple(cfg.att_context_size) == (-1, -1)
            and not cfg.xscaling and cfg.untie_biases and cfg.conv_norm_type == "batch_norm"
            and cfg.conv_context_size is None and cfg.feat_out <= 0
            and cfg.subsampling_factor == 2**cfg.subsampling_stages
        )
        if not supported:
            raise ConfigError(f"encoder: only the LFM2-Audio FastConformer variant is supported, got {cfg}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["att_context_size"] = list(self.att_context_size)
        if self.conv_context_size is not None:
            out["conv_context_size"] = list(self.conv_context_size)
        return out


# Keys that HF/original LFM2 configs carry and that do not change inference. Accepted and ignored.
_LFM2_IGNORED = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "initializer_range", "block_dim", "block_mlp_init_scale", "block_out_init_scale", "block_use_swiglu",
    "block_use_xavier_init", "block_norm_eps", "conv_dim", "conv_dim_out", "conv_use_xavier_init",
    "num_heads", "use_pos_enc", "_name_or_path", "output_size", "tie_word_embeddings", "tie_embedding",
})
_LFM2_RENAMES = {"block_ff_dim": "intermediate_size", "theta": "rope_theta"}


@dataclass(frozen=True, kw_only=True)
class LFM2Config:
    """The LFM2 backbone (also the LFM2.5 detokenizer's backbone). Names follow HF `Lfm2Config`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    layer_types: tuple[str, ...]
    norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    conv_L_cache: int = 3
    conv_bias: bool = False
    block_multiple_of: int = 256
    block_ffn_dim_multiplier: float | None = 1.0
    block_auto_adjust_ff_dim: bool = True
    max_position_embeddings: int = 128_000
    bos_token_id: int = 1
    eos_token_id: int = 7
    pad_token_id: int = 0
    sliding_window: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # ignored keys, kept for writing back

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ff_dim(self) -> int:
        ff = self.intermediate_size
        if self.block_auto_adjust_ff_dim:
            ff = int(2 * ff / 3)
            # As HF Lfm2MLP: the rounding to block_multiple_of happens only with a multiplier.
            if self.block_ffn_dim_multiplier is not None:
                ff = int(self.block_ffn_dim_multiplier * ff)
                ff = self.block_multiple_of * ((ff + self.block_multiple_of - 1) // self.block_multiple_of)
        return ff

    def is_attention(self, layer: int) -> bool:
        return self.layer_types[layer] != "conv"

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_hidden_layers) if self.is_attention(i))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "lfm") -> LFM2Config:
        data = {_LFM2_RENAMES.get(k, k): v for k, v in data.items()}
        extra = {k: v for k, v in data.items() if k in _LFM2_IGNORED}
        data = {k: v for k, v in data.items() if k not in _LFM2_IGNORED}
        rope = data.pop("rope_parameters", None) or data.pop("rope_scaling", None)
        if rope is not None:
            if rope.get("rope_type", "default") != "default":
                raise ConfigError(f"{where}: only default RoPE is supported, got {rope}")
            data.setdefault("rope_theta", rope["rope_theta"])
        full_attn = data.pop("full_attn_idxs", None)
        if "layer_types" not in data:
            if full_attn is None:
                raise ConfigError(f"{where}: needs layer_types or full_attn_idxs")
            data["layer_types"] = ["full_attention" if i in full_attn else "conv"
                                   for i in range(data["num_hidden_layers"])]
        data = dict(_strict_fields(cls, data, where))
        data["layer_types"] = tuple(data["layer_types"])
        bad = set(data["layer_types"]) - {"conv", "full_attention", "sliding_attention"}
        if bad or len(data["layer_types"]) != data["num_hidden_layers"]:
            raise ConfigError(f"{where}: bad layer_types {data['layer_types']}")
        if data.get("conv_bias"):
            raise ConfigError(f"{where}: conv_bias=true is not supported (no published checkpoint uses it)")
        return cls(**data, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["layer_types"] = list(self.layer_types)
        if out["sliding_window"] is None:
            del out["sliding_window"]
        return {**self.extra, **out}


@dataclass(frozen=True, kw_only=True)
class DepthformerConfig:
    layers: int
    dim: int
    tie: bool

    # Fixed by the reference's MHA/GLU constructors, not by config.json.
    num_heads: int = field(default=32, init=False)
    num_kv_heads: int = field(default=8, init=False)
    multiple_of: int = field(default=256, init=False)
    rope_theta: float = field(default=1_000_000.0, init=False)
    norm_eps: float = field(default=1e-5, init=False)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def ff_dim(self) -> int:
        ff = int(2 * 4 * self.dim / 3)
        return self.multiple_of * ((ff + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepthformerConfig:
        cfg = cls(**_strict_fields(cls, data, "depthformer"))
        if cfg.dim % cfg.num_heads or cfg.head_dim % 2:
            raise ConfigError(f"depthformer: dim must be a multiple of {2 * cfg.num_heads}, got {cfg.dim}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "dim": self.dim, "tie": self.tie}


@dataclass(frozen=True, kw_only=True)
class AudioModelConfig:
    """Top-level `config.json` of an LFM2-Audio checkpoint."""

    architectures: tuple[str, ...]
    codebooks: int
    tie_audio_embeddings: bool
    semantic_codebook_factor: float
    codebook_weight: str
    interleaved_n_text: int
    interleaved_n_audio: int
    preprocessor: PreprocessorConfig
    encoder: EncoderConfig
    lfm: LFM2Config
    depthformer: DepthformerConfig
    text_loss_multiplier: float = 1.0
    audio_loss_multiplier: float = 1.0

    audio_vocab: int = field(default=AUDIO_VOCAB, init=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioModelConfig:
        data = dict(data)
        sub = {
            "preprocessor": PreprocessorConfig.from_dict(data.pop("preprocessor", None) or {}),
            "encoder": EncoderConfig.from_dict(data.pop("encoder", None) or {}),
            "lfm": LFM2Config.from_dict(data.pop("lfm", None) or {}),
            "depthformer": DepthformerConfig.from_dict(data.pop("depthformer", None) or {}),
        }
        top = _strict_fields(cls, {**data, **sub}, "config.json")
        top["architectures"] = tuple(top["architectures"])
        cfg = cls(**top)
        if cfg.preprocessor.features != cfg.encoder.feat_in:
            raise ConfigError("preprocessor.features must equal encoder.feat_in")
        if cfg.codebook_weight not in ("log", "linear"):
            raise ConfigError(f"codebook_weight must be 'log' or 'linear', got {cfg.codebook_weight!r}")
        return cfg

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> AudioModelConfig:
        path = Path(directory) / "config.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "architectures": list(self.architectures),
            "codebooks": self.codebooks,
            "tie_audio_embeddings": self.tie_audio_embeddings,
            "semantic_codebook_factor": self.semantic_codebook_factor,
            "codebook_weight": self.codebook_weight,
            "text_loss_multiplier": self.text_loss_multiplier,
            "audio_loss_multiplier": self.audio_loss_multiplier,
            "interleaved_n_text": self.interleaved_n_text,
            "interleaved_n_audio": self.interleaved_n_audio,
            "preprocessor": dataclasses.asdict(self.preprocessor),
            "encoder": self.encoder.to_dict(),
            "lfm": self.lfm.to_dict(),
            "depthformer": self.depthformer.to_dict(),
        }
