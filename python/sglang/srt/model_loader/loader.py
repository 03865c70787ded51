"""Build a model and fill its weights: from an HF folder, a GGUF file, or random (``dummy``).

Input: a ``ResolvedModel`` (``resolve.py``), its ``ModelConfig`` and a load format. Output: the
``nn.Module`` in eval mode on the target device and dtype, every parameter filled (a checkpoint
missing tensors is an error naming them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.distributed.parallel_state import get_tp_group
from sglang.srt.model_loader.gguf_file import iter_gguf_weights
from sglang.srt.model_loader.hf_weights import (
    iter_pt,
    iter_safetensors,
    pt_files,
    safetensors_files,
)
from sglang.srt.model_loader.resolve import ResolvedModel
from sglang.srt.models.llama import expected_weight_names
from sglang.srt.models.registry import get_model_class
from sglang.srt.server_args import QUANTIZATIONS

logger = logging.getLogger(__name__)

LOAD_FORMATS = ("auto", "safetensors", "pt", "gguf", "dummy")


def resolve_quantization(
    quantization: str | None, source: ResolvedModel, load_format: str, device: torch.device | str
) -> str:
    """``--quantization`` -> the method used. ``None`` (auto): ``gguf`` for a GGUF file on CPU
    (its blocks are multiplied directly: 4-7x fewer bytes per token than float32), else none."""
    on_cpu = torch.device(device).type == "cpu"
    is_gguf = load_format == "gguf" or (load_format == "auto" and source.is_gguf)
    if quantization is None:
        return "gguf" if is_gguf and on_cpu else "none"
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization '{quantization}'; expected one of {QUANTIZATIONS}")
    if quantization != "none" and not on_cpu:
        raise ValueError(f"--quantization {quantization} runs on the CPU only (device {device})")
    if quantization == "gguf" and not is_gguf:
        raise ValueError("--quantization gguf needs a GGUF checkpoint (a .gguf file)")
    if quantization == "w8a16" and is_gguf:
        raise ValueError(
            "--quantization w8a16 quantizes a safetensors/pt checkpoint; "
            "a GGUF file is already quantized (use --quantization gguf)"
        )
    return quantization


def iter_weights(
    source: ResolvedModel, load_format: str, keep_quantized: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, tensor)`` pairs of the checkpoint in the requested format (GGUF weights as
    ``QuantizedTensor`` when ``keep_quantized``)."""
    if load_format not in LOAD_FORMATS or load_format == "dummy":
        raise ValueError(f"Unknown load format '{load_format}'; expected one of {LOAD_FORMATS}")
    if load_format == "auto":
        load_format = "gguf" if source.is_gguf else _folder_format(source.folder)
    if load_format == "gguf":
        if not source.is_gguf:
            raise ValueError(f"load_format 'gguf' needs a .gguf file, got '{source.path}'")
        return iter_gguf_weights(source.path, keep_quantized)  # type: ignore[return-value]
    if source.is_gguf:
        raise ValueError(f"'{source.path}' is a GGUF file; use load_format auto or gguf")
    files = (
        safetensors_files(source.folder)
        if load_format == "safetensors"
        else pt_files(source.folder)
    )
    if not files:
        raise ValueError(f"No {load_format} weight files in '{source.folder}'")
    return iter_safetensors(files) if load_format == "safetensors" else iter_pt(files)


def _folder_format(folder: str) -> str:
    if safetensors_files(folder):
        return "safetensors"
    if pt_files(folder):
        return "pt"
    raise ValueError(f"No weights (*.safetensors or pytorch_model*.bin) in '{folder}'")


def init_dummy_weights(
    model: nn.Module, seed: int, std: float = 0.02, per_parameter: bool = False
) -> None:
    """Seeded random weights: norms at 1, everything else N(0, std) (biases too). On CPU drawn in
    float32 from a CPU generator; on a GPU drawn there, in the parameter's dtype (an 8B model
    in seconds rather than minutes), from a generator on that device. ``per_parameter``: each
    parameter from its own generator (seeded with ``seed`` + its index), so that the replicated
    parameters of tensor-parallel ranks (whose shards differ in size) get the same values."""
    generators: dict[torch.device, torch.Generator] = {}
    for index, (name, param) in enumerate(model.named_parameters()):
        if "norm" in name:
            param.data.fill_(1.0)
            continue
        device = param.device
        if device not in generators or per_parameter:
            generators[device] = torch.Generator(device=device).manual_seed(
                seed + index if per_parameter else seed
            )
        gen = generators[device]
        if device.type == "cpu":
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
            param.data.copy_(values)
        else:
            param.data.normal_(0.0, std, generator=gen)


def load_model(
    source: ResolvedModel,
    config: ModelConfig,
    *,
    load_format: str = "auto",
    device: torch.device | str = "cpu",
    seed: int = 0,
    quantization: str = "none",
) -> nn.Module:
    """Instantiate ``config.architecture`` on ``device`` in ``config.dtype`` and load it;
    ``quantization`` is a resolved method (``resolve_quantization``). Under a TP group
    (``parallel_state.tp_group_scope``) the model holds this rank's shards."""
    cls = get_model_class(config.architecture)
    model = cls(config, dtype=config.dtype, device=device)
    if load_format == "dummy":
        init_dummy_weights(model, seed, per_parameter=get_tp_group().size > 1)
    else:
        weights = iter_weights(source, load_format, keep_quantized=quantization == "gguf")
        with torch.no_grad():
            loaded = model.load_weights(weights)  # type: ignore[operator]
        missing = sorted(expected_weight_names(model) - loaded)
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"Checkpoint '{source.path}' lacks {len(missing)} tensors: {shown}")
    finalize_weights(model, quantization)
    return model.eval()


def finalize_weights(model: nn.Module, quantization: str) -> None:
    """Let every layer that can hold quantized weights settle them (the LM head of a ``w8a16``
    model stays dense, as in SGLang's weight-only methods)."""
    for name, module in model.named_modules():
        finalize = getattr(module, "finalize_weights", None)
        if finalize is not None:
            finalize("none" if name.endswith("lm_head") else quantization)


# ---- weight updates (/update_weights_from_disk) ----------------------------------------------------
WEIGHTS_UPDATED = "Succeeded to update model weights."
# What must match for a weight update: the layout of every parameter follows from these.
_SHAPE_FIELDS = ("architecture", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size")


class WeightUpdateError(Exception):
    """A checkpoint that cannot replace the served weights; the message is the reply's."""


def load_replacement(
    current: ModelConfig,
    model_path: str,
    load_format: str | None,
    device: torch.device | str,
    quantization: str = "none",
    generation_config: Any = None,
) -> tuple[nn.Module, ModelConfig, ResolvedModel]:
    """A complete new model from ``model_path`` with the served model's architecture, shapes,
    dtype and context length: (model, its config, its source). WeightUpdateError otherwise
    (nothing served is touched: the caller swaps the model in only on success)."""
    from sglang.srt.hf_transformers_utils import get_config
    from sglang.srt.model_loader.resolve import resolve_model_path

    try:
        source = resolve_model_path(model_path)
    except Exception as exc:  # a wrong path or name: the contract's message
        raise WeightUpdateError(f"Failed to get weights iterator: {model_path} ({exc}).") from exc
    try:
        config = ModelConfig.from_hf_config(
            get_config(source), generation_config=generation_config,
            context_length=current.context_length, dtype=current.dtype, device=device)  # fmt: skip
        for name in _SHAPE_FIELDS:
            old, new = getattr(current, name), getattr(config, name)
            if old != new:
                raise WeightUpdateError(f"Failed to update weights: the checkpoint's {name} is "
                                        f"{new}, the served model's {old}.")
        model = load_model(source, config, load_format=load_format or "auto", device=device,
                           quantization=quantization)  # fmt: skip
    except WeightUpdateError:
        raise
    except Exception as exc:  # any load failure leaves the old weights serving
        logger.warning("weight update from %s failed: %s", model_path, exc)
        raise WeightUpdateError(
            f"Failed to update weights: {type(exc).__name__}: {exc}") from exc
    logger.info("loaded replacement weights from %s", model_path)
    return model, config, source
