"""KVPool: preallocated per-layer K and V tensors indexed by KV slot.

The C++ ``PageAllocator`` (through ``sglang._core.Scheduler``) owns which slots are in use; this
module only owns the memory. Slot ``s`` of layer ``l`` holds the key/value of one token:
``k[l][s]``: [num_kv_heads, head_dim]. Slots ``0..page_size-1`` form the padding page, so padded
gathers may read them freely. The attention backend writes new tokens with ``set_kv`` (at the
plan's ``out_slots``) and reads whole layers with ``get_kv``.
"""

from __future__ import annotations

import torch


class KVPool:
    """Owns ``num_layers`` pairs of [num_slots, num_kv_heads, head_dim] tensors (zeroed)."""

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_slots, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @classmethod
    def bytes_per_token(
        cls, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        """Bytes of K and V one token occupies over all layers (for sizing the pool)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * itemsize

    @property
    def nbytes(self) -> int:
        return self.num_slots * self.bytes_per_token(
            self.num_layers, self.num_kv_heads, self.head_dim, self.dtype
        )

    def set_kv(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``k``, ``v`` [tokens, num_kv_heads, head_dim] at ``slots`` [tokens] (int64)."""
        self.k[layer].index_copy_(0, slots, k.view(-1, self.num_kv_heads, self.head_dim))
        self.v[layer].index_copy_(0, slots, v.view(-1, self.num_kv_heads, self.head_dim))

    def get_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole K and V tensors of ``layer`` (views: callers must not write them)."""
        return self.k[layer], self.v[layer]
