"""oneDNN linear layers with fused epilogues, for the CPU encoders (``models/bert.py``).

``linear(x, weight, bias, post)`` computes ``x @ weight^T + bias`` with oneDNN's JIT GEMM
(``torch.ops.mkldnn._linear_pointwise``) and applies ``post`` in the same pass: ``"gelu"`` (exact,
erf) or ``"add"`` of a residual. On some CPUs this is faster than ``F.linear`` (MKL): on an AMD
EPYC (AVX-512) 7-18% on the encoder's projection shapes, and the fused GELU / residual add save a
pass over the activations each. Whether to use it is measured, not assumed: ``calibrate`` times
both on the model's own largest projection once at load and turns oneDNN on only where it wins.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from sglang.srt.layers.linear import best_time

logger = logging.getLogger(__name__)

POSTS = ("none", "gelu", "add")


def available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn,
                                                                  "_linear_pointwise")  # fmt: skip


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           post: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``post(x @ weight^T + bias)`` for 2-D CPU ``x``; ``post="add"`` adds ``residual``."""
    if post == "add":
        assert residual is not None
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
    if post == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              post: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The same with ``F.linear`` (what ``linear`` replaces)."""
    out = F.linear(x, weight, bias)
    if post == "add":
        assert residual is not None
        return out.add_(residual)
    return F.gelu(out) if post == "gelu" else out


def calibrate(weight: torch.Tensor, rows: int = 512, repeats: int = 5) -> bool:
    """Whether oneDNN runs ``[rows, in] x weight^T`` (+ GELU) at least 5% faster than
    ``F.linear`` + GELU on this CPU (a few milliseconds, once per model load)."""
    if weight.device.type != "cpu" or weight.dim() != 2 or not available():
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, weight.shape[1], generator=gen).to(weight.dtype)
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
    with torch.inference_mode():
        try:
            ours = best_time(lambda: linear(x, weight, bias, "gelu"), repeats)
        except RuntimeError as exc:  # an op this build cannot run: keep F.linear
            logger.info("oneDNN linear unavailable: %s", exc)
            return False
        plain = best_time(lambda: reference(x, weight, bias, "gelu"), repeats)
    wins = ours < 0.95 * plain
    logger.info("encoder GEMMs: %s (oneDNN %.2f ms, F.linear %.2f ms)",
                "oneDNN" if wins else "F.linear", ours * 1e3, plain * 1e3)  # fmt: skip
    return wins
