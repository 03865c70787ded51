"""RadixAttention: the attention layer of a model, a thin handle that forwards to the backend.

A model's attention module computes q, k, v for the batch's new tokens and calls this layer;
the backend (``ForwardBatch.attn_backend``, chosen by the ModelRunner) writes k/v into the KV
pool at the plan's ``out_slots`` and attends over each request's cached tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sglang.srt.layers.rotary_embedding import RotaryEmbedding
    from sglang.srt.model_executor.forward_batch import ForwardBatch


class RadixAttention(nn.Module):
    """Paged causal self-attention of one layer (GQA when ``num_kv_heads < num_heads``)."""

    def __init__(
        self, layer_id: int, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} heads are not a multiple of {num_kv_heads} KV heads")
        self.layer_id = layer_id
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scaling = scaling

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """q [T, heads, head_dim], k/v [T, kv_heads, head_dim] -> [T, heads * head_dim]."""
        if batch.attn_backend is None:
            raise RuntimeError("ForwardBatch has no attention backend (run it through ModelRunner)")
        return batch.attn_backend.forward(q, k, v, self, batch)

    def forward_rope(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rotary: RotaryEmbedding,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        """Like ``forward`` with q/k not yet rotated: a backend with ``fuses_rope`` rotates them
        as it stores k/v (q/k/v may be views into the fused qkv projection)."""
        backend = batch.attn_backend
        if backend is None or not getattr(backend, "fuses_rope", False):
            raise RuntimeError("the attention backend does not apply RoPE itself")
        return backend.forward_rope(q, k, v, rotary.cos_cache, rotary.sin_cache, self, batch)
