"""Attention backends: how a layer's new K/V are stored and attended over the paged KV pool.

``torch_native``: SDPA over gathered K/V (CPU and CUDA; the reference). ``cpu``: the fused C++
kernels (paged decode/extend attention reading K/V through the slot table, RoPE fused with the
KV store); the default on CPU. ``intel_amx`` (SGLang's name for its CPU backend) is an alias of
``cpu``. ``triton``: Triton kernels reading K/V through the slot table, RoPE fused with the KV
store (the default on CUDA; CPU tensors only under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from typing import Any

from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

ALIASES = {"intel_amx": "cpu"}


def _cpu_backend() -> Any:
    from sglang.srt.layers.attention.cpu_backend import CpuAttnBackend

    return CpuAttnBackend()


def _triton_backend() -> Any:
    from sglang.srt.layers.triton_ops import available

    if not available():
        raise ValueError("attention backend 'triton' needs the triton package (pip install triton)")
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    return TritonAttnBackend()


BACKENDS = {"torch_native": TorchNativeAttnBackend, "cpu": _cpu_backend, "triton": _triton_backend}
CPU_ONLY = ("cpu",)


def canonical_backend(name: str) -> str:
    return ALIASES.get(name, name)


def create_attention_backend(name: str) -> Any:
    """Instantiate the backend called ``name`` (``--attention-backend``)."""
    name = canonical_backend(name)
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend '{name}'; supported: {', '.join(BACKENDS)}")
    return BACKENDS[name]()
