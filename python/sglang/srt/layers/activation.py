"""Gated activations of the MLP: ``SiluAndMul`` turns the fused gate/up projection
[tokens, 2 * intermediate] into ``silu(gate) * up`` [tokens, intermediate]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """``silu(x[..., :d]) * x[..., d:]`` for ``d = x.shape[-1] // 2``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]).mul_(x[..., d:])
