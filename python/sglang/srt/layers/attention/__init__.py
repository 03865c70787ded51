"""Attention backends: how a layer's new K/V are stored and attended over the paged KV pool."""

from __future__ import annotations

from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

BACKENDS = {"torch_native": TorchNativeAttnBackend}


def create_attention_backend(name: str) -> TorchNativeAttnBackend:
    """Instantiate the backend called ``name`` (``--attention-backend``)."""
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend '{name}'; supported: {', '.join(BACKENDS)}")
    return BACKENDS[name]()
