"""cpu attention backend: paged attention over the KVPool with the fused C++ kernels (CPU only).

Same contract as ``TorchNativeAttnBackend``: reads a ForwardBatch (``out_slots``,
``req_to_token``, per-request lengths) and a layer's q/k/v, stores k/v in the KVPool at
``out_slots`` and attends over each request's cached tokens, reading K/V through the slot table
(never gathering the cache):

* decode: ``paged_decode_attention`` (GQA groups share each K/V row; bs=1 splits the sequence
  over the threads, flash-decoding);
* extend (prefill, chunked prefill, prefix-cache hits): ``extend_attention`` (causal, blocked).

With ``fuses_rope = True`` the model may call ``forward_rope`` with q/k/v not yet rotated (views
into the qkv projection output): one ``rope_kv_store`` call rotates q in place and writes the
rotated k and v into the pool, then the layer attends.

Per-step metadata (``init_forward_metadata``) is only the step arrays' addresses, checked once and
shared by every layer; a layer call is one or two ``sglang._core`` calls plus the output
allocation. Kernel semantics: ``csrc/include/sglang/kernels/cpu_ops.h``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sglang import _core
from sglang.srt.layers.attention.base import PagedAttnBackend

if TYPE_CHECKING:
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.mem_cache.kv_pool import KVPool
    from sglang.srt.model_executor.forward_batch import ForwardBatch

_CODES = {torch.float32: _core.DTYPE_FLOAT32, torch.bfloat16: _core.DTYPE_BFLOAT16}


@dataclass(frozen=True)
class CpuAttnMetadata:
    """The step's index arrays as core arguments (shared by all layers).

    ``paged``: (req_to_token address, table rows, table row stride, req_pool_indices address,
    seq_lens address, batch size); ``extend``: (prefix_lens address, extend_start address), None
    for decode; ``rope``: (positions address, out_slots address, num_tokens). ``tensors`` keeps
    the arrays the addresses point into alive.
    """

    paged: tuple[int, int, int, int, int, int]
    extend: tuple[int, int] | None
    rope: tuple[int, int, int]
    tensors: tuple[torch.Tensor, ...]


def _index(t: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
    if t.device.type != "cpu" or t.dtype != dtype or t.dim() != 1:
        raise ValueError(f"the cpu backend needs {name} as a 1-D CPU {dtype} tensor, got {t.dtype}")
    return t.contiguous()


class CpuAttnBackend(PagedAttnBackend):
    """Stateless apart from the per-step metadata stored on the ForwardBatch."""

    fuses_rope = True

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        table = batch.req_to_token
        if table.device.type != "cpu" or table.dtype != torch.int32 or table.dim() != 2:
            raise ValueError("the cpu backend needs req_to_token as a 2-D CPU int32 tensor")
        if table.stride(1) != 1:
            table = table.contiguous()
        rpi = _index(batch.req_pool_indices, "req_pool_indices", torch.int64)
        seq_lens = _index(batch.seq_lens, "seq_lens", torch.int32)
        positions = _index(batch.positions, "positions", torch.int64)
        out_slots = _index(batch.out_slots, "out_slots", torch.int64)
        tensors: tuple[torch.Tensor, ...] = (table, rpi, seq_lens, positions, out_slots)
        extend = None
        if batch.is_decode and batch.num_tokens != batch.batch_size:
            raise ValueError(
                f"decode has {batch.num_tokens} tokens for {batch.batch_size} requests"
            )
        if not batch.is_decode:
            if batch.extend_start_cpu and batch.extend_start_cpu[-1] != batch.num_tokens:
                raise ValueError("extend_start[-1] must equal the number of tokens")
            prefix = _index(batch.prefix_lens, "prefix_lens", torch.int32)
            start = _index(batch.extend_start, "extend_start", torch.int32)
            extend = (prefix.data_ptr(), start.data_ptr())
            tensors += (prefix, start)
        batch.attn_metadata = CpuAttnMetadata(
            paged=(
                table.data_ptr(),
                table.shape[0],
                table.stride(0),
                rpi.data_ptr(),
                seq_lens.data_ptr(),
                batch.batch_size,
            ),
            extend=extend,
            rope=(positions.data_ptr(), out_slots.data_ptr(), batch.num_tokens),
            tensors=tensors,
        )

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
        """Like ``forward`` with q/k/v not yet rotated: q [T, H, D], k/v [T, KVH, D] with heads
        contiguous (any token stride); cos/sin caches [max_positions, D / 2] of q's dtype
        (``RotaryEmbedding.cos_cache`` / ``sin_cache``). Rotates q in place (k and v are left
        as they are), stores rotated k and v in the pool, attends; returns [T, H * D]."""
        pool = self._pool(batch)
        meta = batch.attn_metadata
        k_cache, v_cache = pool.get_kv(layer.layer_id)
        d = layer.head_dim
        kvh = layer.num_kv_heads
        if cos_cache.dtype != q.dtype or sin_cache.dtype != q.dtype:
            raise ValueError(f"cos/sin caches ({cos_cache.dtype}) must have q's dtype {q.dtype}")
        if k.stride(2) != 1 or v.stride(2) != 1 or k.stride(1) != d or v.stride(1) != d:
            raise ValueError("k and v must be [tokens, kv_heads, head_dim] with contiguous heads")
        positions, out_slots, tokens = meta.rope
        if k.shape != (tokens, kvh, d) or v.shape != (tokens, kvh, d):
            raise ValueError(f"k / v must be [{tokens}, {kvh}, {d}], got {tuple(k.shape)}")
        if q.shape != (tokens, layer.num_heads, d) or q.stride(2) != 1 or q.stride(1) != d:
            raise ValueError(f"q must be [{tokens}, {layer.num_heads}, {d}] with contiguous heads")
        _core.rope_kv_store_cpu(
            q.data_ptr(),
            q.stride(0),
            k.data_ptr(),
            k.stride(0),
            v.data_ptr(),
            v.stride(0),
            tokens,
            layer.num_heads,
            kvh,
            d,
            positions,
            cos_cache.data_ptr(),
            sin_cache.data_ptr(),
            cos_cache.shape[0],
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            k_cache.shape[0],
            kvh * d,
            out_slots,
            _CODES[q.dtype],
        )
        return self._attend(q, pool, layer, batch)

    def _attend(
        self, q: torch.Tensor, pool: KVPool, layer: RadixAttention, batch: ForwardBatch
    ) -> torch.Tensor:
        meta: CpuAttnMetadata = batch.attn_metadata
        k_cache, v_cache = pool.get_kv(layer.layer_id)
        tokens = q.shape[0]
        heads, d = layer.num_heads, layer.head_dim
        code = _CODES.get(q.dtype)
        if code is None or q.device.type != "cpu" or k_cache.dtype != q.dtype:
            raise ValueError(f"the cpu backend needs CPU float32/bfloat16 q and KV, got {q.dtype}")
        if q.shape != (meta.rope[2], heads, d) or q.stride(2) != 1 or q.stride(1) != d:
            raise ValueError(
                f"q must be [{meta.rope[2]}, {heads}, {d}] with contiguous heads, got "
                f"{tuple(q.shape)} strides {q.stride()}"
            )
        if k_cache.shape[1:] != (layer.num_kv_heads, d) or not k_cache.is_contiguous():
            raise ValueError(
                f"KV pool layers must be contiguous [slots, {layer.num_kv_heads}, {d}]"
            )
        out = torch.empty((tokens, heads * d), dtype=q.dtype)
        args = (
            q.data_ptr(),
            q.stride(0),
            out.data_ptr(),
            heads * d,
            heads,
            layer.num_kv_heads,
            d,
            layer.scaling,
            code,
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            k_cache.shape[0],
            layer.num_kv_heads * d,
            *meta.paged,
        )
        if meta.extend is None:
            _core.paged_decode_attention_cpu(*args)
        else:
            _core.extend_attention_cpu(*args, *meta.extend)
        return out
