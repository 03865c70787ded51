"""Gated activations of the MLP: ``SiluAndMul`` turns the fused gate/up projection
[tokens, 2 * intermediate] into ``silu(gate) * up`` [tokens, intermediate]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers import cpu_ops


def _compiling() -> bool:
    """Under torch.compile the torch formula is traced (inductor fuses it) instead of the kernel."""
    return torch.compiler.is_compiling()


class SiluAndMul(nn.Module):
    """``silu(x[..., :d]) * x[..., d:]`` for ``d = x.shape[-1] // 2`` (one fused C++ kernel with
    ``use_cpu_kernels``, set by the ModelRunner for the ``cpu`` attention backend)."""

    def __init__(self) -> None:
        super().__init__()
        self.use_cpu_kernels = False
        self.use_triton_kernels = False  # set by the ModelRunner on CUDA (one Triton kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_cpu_kernels and x.dim() == 2 and x.is_contiguous() and not _compiling():
            return cpu_ops.silu_and_mul(x)
        if self.use_triton_kernels and x.is_cuda and x.stride(-1) == 1 and not _compiling():
            from sglang.srt.layers.triton_ops.elementwise import silu_and_mul

            return silu_and_mul(x)
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]).mul_(x[..., d:])
