"""torch_native attention backend: paged attention over the KVPool with SDPA (CPU and GPU).

Reads a ForwardBatch (``out_slots``, ``req_to_token``, per-request lengths) and the layer's new
q/k/v; writes k/v into the KVPool at ``out_slots``, then attends:

* decode: the batch's slot rows are gathered once per step into a padded index
  [batch, max_seq_len] (shared by all layers); each layer gathers K/V with one ``index_select``
  and runs one SDPA call with a key-padding mask. GQA is folded into the query dimension
  (q [B, kv_heads, group, D] against K [B, kv_heads, L, D]), so K/V are never repeated.
* extend (prefill, chunked prefill, prefix-cache hits): per request, queries at positions
  ``prefix..seq_len-1`` see keys ``0..own position``. Without a cached prefix the fresh k/v are
  used directly; with one, the request's keys are gathered from the pool.

Masks and gather indices are built once per step in ``init_forward_metadata``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.model_executor.forward_batch import ForwardBatch


@dataclass
class DecodeMetadata:
    slots: torch.Tensor  # [B * max_len] KV slots, rows padded with slot 0
    max_len: int
    mask: torch.Tensor | None  # [B, 1, 1, max_len] bool, None when every row is full


@dataclass
class ExtendSegment:
    start: int  # first token row of the request in the batch
    end: int
    slots: torch.Tensor | None  # [seq_len] KV slots when the request has a cached prefix
    mask: torch.Tensor | None  # [extend_len, seq_len] bool (cached prefix, several queries)
    causal: bool  # no prefix, several queries: SDPA's own causal mask


@dataclass
class ExtendMetadata:
    segments: list[ExtendSegment]


class TorchNativeAttnBackend:
    """Stateless apart from the per-step metadata stored on the ForwardBatch."""

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        if batch.is_decode:
            batch.attn_metadata = self._decode_metadata(batch)
        else:
            batch.attn_metadata = self._extend_metadata(batch)

    @staticmethod
    def _decode_metadata(batch: ForwardBatch) -> DecodeMetadata:
        max_len = batch.max_seq_len
        rows = batch.req_to_token[:, :max_len].index_select(0, batch.req_pool_indices)
        mask = None
        if min(batch.seq_lens_cpu) != max_len:
            cols = torch.arange(max_len, device=rows.device, dtype=batch.seq_lens.dtype)
            valid = cols[None, :] < batch.seq_lens[:, None]
            # Entries past a row's length are unspecified (the table is not cleared): point
            # them at the padding slot 0 so the gather stays in bounds; the mask hides them.
            rows = rows.masked_fill(~valid, 0)
            mask = valid[:, None, None, :]
        return DecodeMetadata(slots=rows.reshape(-1), max_len=max_len, mask=mask)

    @staticmethod
    def _extend_metadata(batch: ForwardBatch) -> ExtendMetadata:
        device = batch.out_slots.device
        table = batch.req_to_token
        segments = []
        for i in range(batch.batch_size):
            start, end = batch.extend_start_cpu[i], batch.extend_start_cpu[i + 1]
            prefix, seq = batch.prefix_lens_cpu[i], batch.seq_lens_cpu[i]
            if prefix == 0:  # all keys are new: plain causal attention over the fresh k/v
                segments.append(ExtendSegment(start, end, None, None, causal=end - start > 1))
                continue
            slots = table[batch.req_pool_indices_cpu[i], :seq]
            mask = None
            if end - start > 1:  # SDPA's is_causal aligns top-left; the queries sit bottom-right
                keys = torch.arange(seq, device=device)
                queries = torch.arange(prefix, seq, device=device)
                mask = keys[None, :] <= queries[:, None]
            segments.append(ExtendSegment(start, end, slots, mask, causal=False))
        return ExtendMetadata(segments)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: RadixAttention,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] -> attention output [T, H * D]."""
        pool = batch.kv_pool
        if pool is None:
            raise RuntimeError("ForwardBatch has no KV pool (run it through ModelRunner)")
        if batch.attn_metadata is None:
            self.init_forward_metadata(batch)
        pool.set_kv(layer.layer_id, batch.out_slots, k, v)
        k_cache, v_cache = pool.get_kv(layer.layer_id)
        if batch.is_decode:
            return self._decode(q, k_cache, v_cache, layer, batch.attn_metadata)
        return self._extend(q, k, v, k_cache, v_cache, layer, batch.attn_metadata)

    @staticmethod
    def _decode(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        layer: RadixAttention,
        meta: DecodeMetadata,
    ) -> torch.Tensor:
        bs = q.shape[0]
        kvh, d = layer.num_kv_heads, layer.head_dim
        group = layer.num_heads // kvh
        shape = (bs, meta.max_len, kvh, d)
        keys = k_cache.view(-1, kvh * d).index_select(0, meta.slots).view(shape).transpose(1, 2)
        vals = v_cache.view(-1, kvh * d).index_select(0, meta.slots).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.reshape(bs, kvh, group, d), keys, vals, attn_mask=meta.mask, scale=layer.scaling
        )
        return out.reshape(bs, layer.num_heads * d)

    @staticmethod
    def _extend(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        layer: RadixAttention,
        meta: ExtendMetadata,
    ) -> torch.Tensor:
        kvh, d = layer.num_kv_heads, layer.head_dim
        out = torch.empty(q.shape[0], layer.num_heads, d, dtype=q.dtype, device=q.device)
        gqa = kvh != layer.num_heads
        for seg in meta.segments:
            if seg.slots is None:
                keys, vals = k[seg.start : seg.end], v[seg.start : seg.end]
            else:
                keys = k_cache.index_select(0, seg.slots)
                vals = v_cache.index_select(0, seg.slots)
            # 4-D inputs: SDPA's fused CPU kernel only takes batched inputs (3-D ones fall back
            # to the unfused math path).
            o = F.scaled_dot_product_attention(
                q[seg.start : seg.end].transpose(0, 1)[None],
                keys.transpose(0, 1)[None],
                vals.transpose(0, 1)[None],
                attn_mask=seg.mask,
                is_causal=seg.causal,
                scale=layer.scaling,
                enable_gqa=gqa,
            )
            out[seg.start : seg.end] = o[0].transpose(0, 1)
        return out.view(q.shape[0], layer.num_heads * d)
