"""RMSNorm, optionally fused with the residual add that precedes it in a pre-norm decoder.

Input: hidden states [tokens, hidden] (and the running residual). Output: normalized states
(and the new residual). ``torch.nn.functional.rms_norm`` is bit-identical to the HF Llama
formula ``w * (x * rsqrt(mean(x^2) + eps))`` in float32 and one fused op. With
``use_cpu_kernels`` (set by the ModelRunner for the ``cpu`` attention backend) the fused C++
kernels run instead; the residual form then works in place (``x`` becomes the normalized
states, ``residual`` the sum), so callers must pass tensors they own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers import cpu_ops


def triton_elementwise() -> Any:
    from sglang.srt.layers.triton_ops import elementwise

    return elementwise


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension (HF ``LlamaRMSNorm`` semantics)."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device))
        self.eps = eps
        self.shape = (hidden_size,)
        self.use_cpu_kernels = False
        self.use_triton_kernels = False  # set by the ModelRunner on CUDA (fused Triton kernels)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``norm(x)``, or with ``residual``: ``(norm(x + residual), x + residual)``."""
        if self.use_cpu_kernels and x.is_contiguous() and not torch.compiler.is_compiling():
            if residual is None:  # any leading dims (per-head q/k norms): rows of the last one
                rows = x.view(-1, x.shape[-1])
                return cpu_ops.rms_norm(rows, self.weight, self.eps).view(x.shape)
            if x.dim() == 2 and residual.is_contiguous():
                cpu_ops.fused_add_rms_norm_(x, residual, self.weight, self.eps)
                return x, residual
        if self.use_triton_kernels and x.is_cuda and not torch.compiler.is_compiling():
            if residual is None:
                return triton_elementwise().rms_norm(x, self.weight, self.eps)
            if x.dim() == 2 and x.is_contiguous() and residual.is_contiguous():
                triton_elementwise().fused_add_rms_norm_(x, residual, self.weight, self.eps)
                return x, residual
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.shape, self.weight, self.eps)
        # HF computes the statistics in float32 and rounds before applying the weight.
        y = F.rms_norm(x.float(), self.shape, None, self.eps).to(x.dtype)
        return y * self.weight

    def extra_repr(self) -> str:
        return f"{self.shape[0]}, eps={self.eps}"
