"""triton attention backend: paged attention over the KVPool with Triton kernels (the default on
CUDA; on CPU only under Triton's interpreter, for the tests).

Same contract as ``TorchNativeAttnBackend``: reads a ForwardBatch (``out_slots``,
``req_to_token``, per-request lengths) and a layer's q/k/v, stores k/v in the KVPool at
``out_slots`` and attends over each request's cached tokens, reading K/V through the slot table:

* decode: ``decode_attention`` (split-KV, two launches; nothing of the step's lengths on the host
  side, so the CUDA graph runner captures it once per batch size);
* extend (prefill, chunked prefill, prefix-cache hits): ``extend_attention`` (causal, one launch).

With ``fuses_rope = True`` the model calls ``forward_rope`` with q/k/v not yet rotated: one
``rope_kv_store_`` launch rotates q in place and writes the rotated k and v into the pool.
Kernels: ``sglang.srt.layers.triton_ops``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sglang.srt.layers.attention.base import PagedAttnBackend
from sglang.srt.layers.triton_ops import attention as ops
from sglang.srt.layers.triton_ops.elementwise import rope_kv_store_

if TYPE_CHECKING:
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.mem_cache.kv_pool import KVPool
    from sglang.srt.model_executor.forward_batch import ForwardBatch


@dataclass(frozen=True)
class TritonAttnMetadata:
    """Per step, shared by every layer: the table row of each request and, for extend, the
    longest extend (the launch grid)."""

    row_index: torch.Tensor  # [B] int64
    max_extend_len: int


@functools.cache
def _num_sms(device_index: int | None) -> int:
    if device_index is None:  # CPU (the interpreter): any fixed count
        return 8
    return torch.cuda.get_device_properties(device_index).multi_processor_count


class TritonAttnBackend(PagedAttnBackend):
    """Stateless apart from the per-step metadata stored on the ForwardBatch."""

    fuses_rope = True
    supports_cuda_graph = True  # decode reads the step from device memory only

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        max_extend = 0
        if not batch.is_decode:
            starts = batch.extend_start_cpu
            max_extend = max((b - a for a, b in itertools.pairwise(starts)), default=0)
        batch.attn_metadata = TritonAttnMetadata(batch.req_pool_indices, max_extend)

    def forward_rope(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos_cache: torch.Tensor,
        sin_cache: torch.Tensor,
        layer: RadixAttention,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        """Like ``forward`` with q/k not yet rotated (``RotaryEmbedding`` caches [max_pos,
        D / 2]): q is rotated in place, rotated k and v go to the pool; returns [T, H * D]."""
        pool = self._pool(batch)
        k_cache, v_cache = pool.get_kv(layer.layer_id)
        rope_kv_store_(
            q, k, v, cos_cache, sin_cache, batch.positions, batch.out_slots, k_cache, v_cache
        )
        return self._attend(q, pool, layer, batch)

    def _attend(
        self, q: torch.Tensor, pool: KVPool, layer: RadixAttention, batch: ForwardBatch
    ) -> torch.Tensor:
        meta: TritonAttnMetadata = batch.attn_metadata
        k_cache, v_cache = pool.get_kv(layer.layer_id)
        tokens, heads, d = q.shape[0], layer.num_heads, layer.head_dim
        out = torch.empty((tokens, heads, d), dtype=q.dtype, device=q.device)
        if batch.is_decode:
            device = None
            if q.device.type == "cuda":
                device = (
                    q.device.index if q.device.index is not None else torch.cuda.current_device()
                )
            splits = ops.decode_splits(batch.batch_size, layer.num_kv_heads, _num_sms(device))
            ops.decode_attention(
                q, k_cache, v_cache, batch.req_to_token, meta.row_index, batch.seq_lens,
                layer.scaling, splits, out=out,
            )  # fmt: skip
        else:
            ops.extend_attention(
                q, k_cache, v_cache, batch.req_to_token, meta.row_index, batch.prefix_lens,
                batch.extend_start, batch.seq_lens, meta.max_extend_len, layer.scaling, out=out,
            )  # fmt: skip
        return out.view(tokens, heads * d)
