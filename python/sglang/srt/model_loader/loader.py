"""Build a model and fill its weights: from an HF folder, a GGUF file, or random (``dummy``).

Input: a ``ResolvedModel`` (``resolve.py``), its ``ModelConfig`` and a load format. Output: the
``nn.Module`` in eval mode on the target device and dtype, every parameter filled (a checkpoint
missing tensors is an error naming them).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
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

LOAD_FORMATS = ("auto", "safetensors", "pt", "gguf", "dummy")


def iter_weights(source: ResolvedModel, load_format: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, tensor)`` pairs of the checkpoint in the requested format."""
    if load_format not in LOAD_FORMATS or load_format == "dummy":
        raise ValueError(f"Unknown load format '{load_format}'; expected one of {LOAD_FORMATS}")
    if load_format == "auto":
        load_format = "gguf" if source.is_gguf else _folder_format(source.folder)
    if load_format == "gguf":
        if not source.is_gguf:
            raise ValueError(f"load_format 'gguf' needs a .gguf file, got '{source.path}'")
        return iter_gguf_weights(source.path)
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


def init_dummy_weights(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Seeded random weights: norms at 1, everything else N(0, std) (biases too)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name:
            param.data.fill_(1.0)
            continue
        values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
        param.data.copy_(values)


def load_model(
    source: ResolvedModel,
    config: ModelConfig,
    *,
    load_format: str = "auto",
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> nn.Module:
    """Instantiate ``config.architecture`` on ``device`` in ``config.dtype`` and load it."""
    cls = get_model_class(config.architecture)
    model = cls(config, dtype=config.dtype, device=device)
    if load_format == "dummy":
        init_dummy_weights(model, seed)
    else:
        with torch.no_grad():
            loaded = model.load_weights(iter_weights(source, load_format))  # type: ignore[operator]
        missing = sorted(expected_weight_names(model) - loaded)
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"Checkpoint '{source.path}' lacks {len(missing)} tensors: {shown}")
    return model.eval()
