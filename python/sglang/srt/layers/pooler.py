"""Pooling of token hidden states into one embedding per request (embedding models).

``PoolingConfig`` says how: ``cls`` (the first token), ``mean`` (over the request's tokens),
``last`` (the last token: decoder embedding models such as gte-Qwen2 / Qwen3-Embedding) and
whether the result is L2-normalised. ``pooling_config(folder, default)`` reads it from the
sentence-transformers files of a checkpoint (``modules.json``, the Pooling module's
``config.json``, a ``Normalize`` module) when they are there, else takes the model's default.
``pool`` works on the flat token rows of a batch with each request's [start, end) rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

POOLING_MODES = ("cls", "mean", "last")

# sentence-transformers' Pooling config keys -> our mode (the first true one wins).
_ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "last",
}


@dataclass(frozen=True)
class PoolingConfig:
    mode: str = "cls"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {self.mode!r}")


def pooling_config(folder: str | Path | None, default: PoolingConfig) -> PoolingConfig:
    """The sentence-transformers pooling of the checkpoint in ``folder``, else ``default``."""
    if folder is None:
        return default
    modules_file = Path(folder) / "modules.json"
    if not modules_file.is_file():
        return default
    try:
        modules = json.loads(modules_file.read_text())
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", modules_file, e)
        return default
    mode, normalize = default.mode, False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            cfg_file = Path(folder) / str(module.get("path", "")) / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
            modes = [ours for key, ours in _ST_MODES.items() if cfg.get(key)]
            unsupported = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            if not modes and unsupported:
                raise ValueError(f"unsupported sentence-transformers pooling {unsupported}")
            if modes:
                mode = modes[0]
        elif kind.endswith(".Normalize"):
            normalize = True
    return PoolingConfig(mode, normalize)


def pool(
    hidden: torch.Tensor, starts: list[int], config: PoolingConfig, dimensions: int | None = None
) -> torch.Tensor:
    """[tokens, H] rows of len(starts) - 1 requests -> [requests, H'] float32 embeddings.
    ``dimensions`` keeps the first that many features (Matryoshka) before normalising."""
    bounds = torch.tensor(starts, device=hidden.device)
    first, end = bounds[:-1], bounds[1:]
    if config.mode == "cls":
        out = hidden.index_select(0, first)
    elif config.mode == "last":
        out = hidden.index_select(0, end - 1)
    else:
        lengths = end - first
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
        sums = torch.zeros(len(lengths), hidden.shape[1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, owner, hidden.float())
        out = sums / lengths.clamp(min=1)[:, None]
    out = out.float()
    if dimensions is not None:
        out = out[:, :dimensions]
    if config.normalize:
        out = F.normalize(out, p=2.0, dim=-1)
    return out
