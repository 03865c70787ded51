"""Triton kernels of the GPU path: paged attention (decode, extend) and the fused elementwise
layers (RMSNorm with the residual add, SiLU-and-mul, RoPE with the KV-cache store).

Every kernel reads K/V through the scheduler's slot table (``req_to_token`` rows), never a
gathered copy, and takes any token stride, so q/k/v may be views into the fused qkv projection.
They run on CUDA and, for the tests, on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``); ``available()`` says whether Triton can be imported at all.

Numerics: products and softmax in float32; with float32 inputs the dot products are exact IEEE
float32 (no TF32), with 16-bit inputs they take the tensor cores' 16-bit inputs and float32
accumulation, as FlashAttention does.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def available() -> bool:
    """Whether ``triton`` imports (the kernels' modules import it at their top)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 (ImportError, or a broken install failing at import)
        return False
    return True


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``): on CPU tensors,
    with numpy arithmetic, where 16-bit floats must be widened before any arithmetic."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
