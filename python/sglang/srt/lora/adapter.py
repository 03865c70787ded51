"""A PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, as
``peft``'s ``save_pretrained`` writes it), read and checked.

``LoraAdapter.load(name, folder, max_rank)`` returns the adapter's ``LoraConfig`` (rank, alpha,
rsLoRA, target modules) and its weights by (layer, module): ``A`` [rank, in] and ``B`` [out, rank]
(PEFT's ``lora_A`` / ``lora_B``), so that the adapted projection is ``W x + scaling * B (A x)``.
What this server cannot apply is a ``LoraError`` (a ``ValueError``: a 400 when a request or
``/load_lora_adapter`` names it) that says why: no such folder, DoRA, trained biases,
``modules_to_save``, per-module ranks, a rank above ``--max-lora-rank``, target modules other than
the decoder's projections (q/k/v/o, gate/up/down), and tensors that do not fit the base model
(``check_base``: layer count and projection shapes).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?"
                  r"\.weight$")  # fmt: skip


class LoraError(ValueError):
    """An adapter this server cannot load or apply; the message says why."""


@dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float
    targets: tuple[str, ...]
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        """PEFT's factor of ``B (A x)``: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @classmethod
    def read(cls, path: Path) -> LoraConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LoraError(f"{path} is not a readable adapter config: {exc}") from None
        if str(raw.get("peft_type", "LORA")).upper() != "LORA":
            raise LoraError(f"peft_type {raw.get('peft_type')!r} is not supported: only LORA.")
        unsupported = {"use_dora": "DoRA", "modules_to_save": "modules_to_save",
                       "rank_pattern": "per-module ranks (rank_pattern)",
                       "alpha_pattern": "per-module alphas (alpha_pattern)",
                       "layers_to_transform": "layers_to_transform",
                       "fan_in_fan_out": "fan_in_fan_out"}  # fmt: skip
        for key, what in unsupported.items():
            if raw.get(key):
                raise LoraError(f"The adapter uses {what}, which is not supported.")
        if raw.get("bias", "none") != "none":
            raise LoraError(f"The adapter trains biases (bias={raw.get('bias')!r}), which is not "
                            "supported: only bias='none'.")
        targets = raw.get("target_modules") or []
        if targets == "all-linear":
            targets = list(TARGETS)
        if isinstance(targets, list):  # peft writes full paths for all-linear: take the names
            targets = [t.rsplit(".", 1)[-1] if isinstance(t, str) else t for t in targets]
        if isinstance(targets, str) or not set(targets) <= set(TARGETS):
            raise LoraError(f"target_modules {targets!r} is not supported: a list of "
                            f"{', '.join(TARGETS)} (or 'all-linear').")
        rank = raw.get("r")
        if not isinstance(rank, int) or rank < 1:
            raise LoraError(f"The adapter's rank r must be a positive integer, got {rank!r}.")
        alpha = raw.get("lora_alpha", rank)
        return cls(rank=rank, alpha=float(alpha), targets=tuple(sorted(set(targets))),
                   use_rslora=bool(raw.get("use_rslora", False)))  # fmt: skip


@dataclass
class LoraAdapter:
    name: str
    path: str
    config: LoraConfig
    # (layer, module) -> (A [rank, in], B [out, rank]), float32 on the CPU
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @classmethod
    def load(cls, name: str, folder: str, max_rank: int | None = None) -> LoraAdapter:
        path = Path(folder)
        if not (path / "adapter_config.json").is_file():
            raise LoraError(f"LoRA adapter '{name}': {folder} is not a PEFT adapter folder (no "
                            "adapter_config.json).")
        config = LoraConfig.read(path / "adapter_config.json")
        if max_rank is not None and config.rank > max_rank:
            raise LoraError(f"LoRA adapter '{name}' has rank {config.rank}, above the server's "
                            f"--max-lora-rank {max_rank}.")
        return cls(name, str(path), config, _read_weights(name, path, config))

    def check_base(self, num_layers: int, shape: Callable[[str], tuple[int, int]]) -> None:
        """LoraError unless every tensor fits the base model: ``num_layers`` decoder layers and
        ``shape(module)`` = (in, out) features of each projection."""
        for (layer, module), (a, b) in self.weights.items():
            if layer >= num_layers:
                raise LoraError(f"LoRA adapter '{self.name}' has weights for layer {layer}; the "
                                f"base model has {num_layers} layers (another base model?).")
            fan_in, fan_out = shape(module)
            if a.shape[1] != fan_in or b.shape[0] != fan_out:
                raise LoraError(f"LoRA adapter '{self.name}': {module} of layer {layer} maps "
                                f"{a.shape[1]} -> {b.shape[0]} features, the base model's "
                                f"{fan_in} -> {fan_out} (another base model?).")


def _read_weights(name: str, path: Path, config: LoraConfig
                  ) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    from safetensors.torch import load_file

    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise LoraError(f"LoRA adapter '{name}': no adapter_model.safetensors in {path}.")
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own error type)
        raise LoraError(f"LoRA adapter '{name}': {file} is not a readable safetensors file "
                        f"({type(exc).__name__}: {str(exc)[:200]}).") from None
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None or match.group(2) not in config.targets:
            raise LoraError(f"LoRA adapter '{name}': tensor {key} is not a LoRA weight of the "
                            f"target modules {list(config.targets)}.")
        layer, module, half = int(match.group(1)), match.group(2), match.group(3)
        halves.setdefault((layer, module), {})[half] = tensor.float()
    weights = {}
    for (layer, module), pair in sorted(halves.items()):
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or \
                a.shape[0] != config.rank or b.shape[1] != config.rank:
            raise LoraError(f"LoRA adapter '{name}': {module} of layer {layer} needs lora_A "
                            f"[{config.rank}, in] and lora_B [out, {config.rank}].")
        weights[(layer, module)] = (a, b)
    if not weights:
        raise LoraError(f"LoRA adapter '{name}' holds no LoRA weights.")
    return weights
