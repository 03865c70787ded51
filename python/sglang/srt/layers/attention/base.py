"""What the paged attention backends that read K/V through the slot table share (``cpu``,
``triton``): the step's pool lookup, and ``forward`` for already-rotated q/k (store k/v at the
plan's ``out_slots``, then attend). A backend supplies ``init_forward_metadata`` and ``_attend``
(and ``forward_rope`` when it fuses RoPE with the store)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.mem_cache.kv_pool import KVPool
    from sglang.srt.model_executor.forward_batch import ForwardBatch


class PagedAttnBackend:
    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        raise NotImplementedError

    def _attend(
        self, q: torch.Tensor, pool: KVPool, layer: RadixAttention, batch: ForwardBatch
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: RadixAttention,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        """q [T, H, D] and k/v [T, KVH, D], already rotated -> attention output [T, H * D]."""
        pool = self._pool(batch)
        pool.set_kv(layer.layer_id, batch.out_slots, k, v)
        return self._attend(q, pool, layer, batch)

    def _pool(self, batch: ForwardBatch) -> KVPool:
        """The step's KV pool, with the step's metadata built if it is not yet."""
        pool = batch.kv_pool
        if pool is None:
            raise RuntimeError("ForwardBatch has no KV pool (run it through ModelRunner)")
        if batch.attn_metadata is None:
            self.init_forward_metadata(batch)
        return pool
