"""Tensors of an HF model folder: ``*.safetensors`` (sharded via ``model.safetensors.index.json``
or not) or ``pytorch_model*.bin``, yielded one at a time as ``(hf_name, tensor)`` for
``load_weights`` so a checkpoint is never held twice in memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch


def safetensors_files(folder: str) -> list[Path]:
    root = Path(folder)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [root / name for name in sorted(set(weight_map.values()))]
    return sorted(root.glob("*.safetensors"))


def pt_files(folder: str) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.glob("pytorch_model*.bin"))


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name)


def iter_pt(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        del state
