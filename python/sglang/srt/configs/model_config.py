"""ModelConfig: the normalized view of a checkpoint's HF config that the model runner builds from.

Input is an HF config (a ``transformers.PretrainedConfig`` or the plain dict of ``config.json``,
or the dict built from GGUF metadata by ``model_loader.gguf``) plus the optional
``generation_config.json``. Output is a flat, typed dataclass read by the model classes
(``sglang.srt.models``), the KV pool sizing and the engine (context length, EOS ids, vocab size).
Handles both the transformers 5 ``rope_parameters`` layout and the older ``rope_theta`` +
``rope_scaling`` keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

_ARCH_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# Keys that various configs use for the trained context length, in order of preference.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")

_DTYPES: dict[str, torch.dtype] = {
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float32,
    "float32": torch.float32,
}

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """Map a ``--dtype`` value to a torch dtype; ``auto`` is float32 on CPU, bfloat16 on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.lower().removeprefix("torch.")
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in _DTYPES:
        choices = ", ".join(["auto", *_DTYPES])
        raise ValueError(f"Unknown dtype '{dtype}'; expected one of: {choices}")
    return _DTYPES[name]


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters. ``rope_type`` is one of ``SUPPORTED_ROPE_TYPES``."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int | None = None  # llama3


@dataclass
class ModelConfig:
    """Architecture hyper-parameters of a decoder-only causal LM, plus serving-side settings."""

    architecture: str
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool
    context_length: int
    eos_token_ids: list[int]
    dtype: torch.dtype
    bos_token_id: int | None = None
    attention_bias: bool = False  # bias on q/k/v (and o for Llama-style configs)
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    hidden_act: str = "silu"
    # Multimodal RoPE (Qwen2-VL): rotary pairs per (time, height, width) section; None for 1-D.
    mrope_section: list[int] | None = None
    hf_config: Any = field(default=None, repr=False)

    @property
    def rope_theta(self) -> float:
        return self.rope.theta

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf_config(
        cls,
        hf_config: Any,
        *,
        generation_config: Any = None,
        context_length: int | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "cpu",
    ) -> ModelConfig:
        """Build from an HF config object or dict (and optionally its generation config). A
        vision-language config's language model is read from its ``text_config``."""
        cfg = _language_model_config(_as_dict(hf_config))
        model_type = str(cfg.get("model_type", ""))
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or hidden // heads
        derived_ctx = _derive_context_length(cfg)
        if context_length is not None and derived_ctx and context_length > derived_ctx:
            logger.warning(
                "context_length %d is longer than the model's %d; outputs past it may be poor",
                context_length,
                derived_ctx,
            )
        return cls(
            architecture=_architecture(cfg, model_type),
            model_type=model_type,
            hidden_size=hidden,
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=_rope_config(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            context_length=int(context_length or derived_ctx or 2048),
            eos_token_ids=_eos_token_ids(cfg, _as_dict(generation_config)),
            dtype=resolve_dtype(dtype, device),
            bos_token_id=cfg.get("bos_token_id"),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=model_type.startswith("qwen3"),
            hidden_act=str(cfg.get("hidden_act", "silu")),
            mrope_section=_mrope_section(cfg),
            hf_config=hf_config,
        )


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(vars(config))


def _language_model_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's parameters of a config: a vision-language config nests them in
    ``text_config`` (transformers >= 5 writes them there; older Qwen2-VL configs keep them at the
    top); the architecture, model type and word-embedding tying are the outer config's."""
    text = cfg.get("text_config")
    if not isinstance(text, Mapping) or "hidden_size" in cfg:
        return cfg
    merged = {**text, "architectures": cfg.get("architectures"),
              "model_type": cfg.get("model_type", text.get("model_type"))}
    for key in ("tie_word_embeddings", "eos_token_id", "bos_token_id"):
        if cfg.get(key) is not None:
            merged[key] = cfg[key]
    return merged


def _mrope_section(cfg: dict[str, Any]) -> list[int] | None:
    """Qwen2-VL's M-RoPE sections (transformers' default when the config names none)."""
    if not str(cfg.get("model_type", "")).startswith(("qwen2_vl", "qwen2_5_vl")):
        return None
    rope = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
    return [int(x) for x in rope.get("mrope_section") or (16, 24, 24)]


def _architecture(cfg: dict[str, Any], model_type: str) -> str:
    archs = cfg.get("architectures") or []
    if archs:
        return str(archs[0])
    if model_type in _ARCH_BY_MODEL_TYPE:
        return _ARCH_BY_MODEL_TYPE[model_type]
    raise ValueError(f"The config names no architecture and has unknown model_type '{model_type}'")


def _derive_context_length(cfg: dict[str, Any]) -> int | None:
    for key in _CONTEXT_KEYS:
        if cfg.get(key):
            return int(cfg[key])
    return None


def _rope_config(cfg: dict[str, Any]) -> RopeConfig:
    """Read ``rope_parameters`` (transformers >= 5) or ``rope_theta`` + ``rope_scaling``."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    merged = {**scaling, **params}
    theta = merged.get("rope_theta") or cfg.get("rope_theta") or 10000.0
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type == "mrope":  # Qwen2-VL: default frequencies, split into sections by the model
        rope_type = "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"RoPE type '{rope_type}' is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    orig = merged.get("original_max_position_embeddings") or _derive_context_length(cfg)
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(orig) if orig else None,
    )


def _eos_token_ids(cfg: dict[str, Any], gen: dict[str, Any]) -> list[int]:
    """Union of the config's and the generation config's EOS ids, in order of appearance."""
    out: list[int] = []
    for source in (cfg.get("eos_token_id"), gen.get("eos_token_id")):
        values = source if isinstance(source, (list, tuple)) else [source]
        for value in values:
            if value is not None and int(value) not in out:
                out.append(int(value))
    return out
