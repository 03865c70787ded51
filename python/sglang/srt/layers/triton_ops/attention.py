"""Paged attention in Triton: decode (split-KV, two stages) and extend (prefill with a cached
prefix), both reading K/V through the request's slot-table row.

Shapes (T tokens, B requests, H query heads, KVH key/value heads, D head_dim):

* ``q`` [T, H, D] (any token stride, contiguous heads), ``k_cache`` / ``v_cache`` [slots, KVH, D]
  of one layer (contiguous), ``table`` [rows, width] int32 (``req_to_token`` or a compact copy),
  ``row_index`` [B] (the table row of each request), ``seq_lens`` [B] int32.
* decode: one query per request (T = B); request b sees its keys ``0..seq_lens[b]-1``.
* extend: request b's queries are rows ``extend_start[b]..extend_start[b+1]-1`` at positions
  ``prefix_lens[b]..seq_lens[b]-1``; each sees its keys up to its own position. Its new keys must
  already be in the pool (the backend stores them first).

GQA: query head h reads key/value head ``h // (H / KVH)``; decode gives the heads of a group one
program, so each K/V row is read once per group.

Decode splits every sequence into ``num_splits`` parts (a power of two, fixed per batch size so
that a CUDA graph can capture it; empty parts are allowed); stage 1 writes each part's partial
output and log-sum-exp into float32 scratch, stage 2 merges them. No host value of the step
(lengths, max length) enters the decode launch, so it can be replayed by a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang.srt.layers.triton_ops import interpreting

MAX_DECODE_SPLITS = 16


@triton.jit
def _attend_keys(
    q, m, denom, acc, K, V, table_row, n, n_mask, visible, kv_head,
    stride_kt, stride_kh, stride_vt, stride_vh, d, d_mask, scale,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One block of keys ``n`` (table positions; ``n_mask`` in range) for a tile of queries:
    reads K/V through ``table_row``, scores them against q [rows, D], keeps the scores where
    ``visible`` [rows, keys] and folds them into the online-softmax state (m, denom, acc)."""
    slots = tl.load(table_row + n, mask=n_mask, other=0).to(tl.int64)
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K + slots[:, None] * stride_kt + kv_head * stride_kh + d[None, :],
                mask=kv_mask, other=0.0)  # fmt: skip
    v = tl.load(V + slots[:, None] * stride_vt + kv_head * stride_vh + d[None, :],
                mask=kv_mask, other=0.0)  # fmt: skip
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q.to(k.dtype), tl.trans(k), input_precision=PRECISION) * scale
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(s - m_new[:, None])
    denom = denom * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, denom, acc


@triton.jit
def _decode_stage1(
    Q, K, V, Table, RowIndex, SeqLens, MidO, MidLse,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_table,
    scale,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, NUM_SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    row = tl.load(RowIndex + b).to(tl.int64)
    part = tl.cdiv(seq_len, NUM_SPLITS)
    start = split * part
    end = tl.minimum(start + part, seq_len)

    h_off = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + h_off
    h_mask = h_off < GROUP
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(Q + b * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=h_mask[:, None] & d_mask[None, :], other=0.0)  # fmt: skip
    if UPCAST:
        q = q.to(tl.float32)

    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < end
        m, denom, acc = _attend_keys(
            q, m, denom, acc, K, V, Table + row * stride_table, n, n_mask, n_mask[None, :],
            kv_head, stride_kt, stride_kh, stride_vt, stride_vh, d, d_mask, scale,
            UPCAST, PRECISION,
        )  # fmt: skip

    mid = (b * NUM_HEADS + heads) * NUM_SPLITS + split  # [B, H, NUM_SPLITS] scratch rows
    o_mask = h_mask[:, None] & d_mask[None, :]
    if end > start:
        tl.store(MidO + mid[:, None] * HEAD_DIM + d[None, :], acc / denom[:, None], mask=o_mask)
        tl.store(MidLse + mid, m + tl.log(denom), mask=h_mask)
    else:
        tl.store(MidLse + mid, tl.full([BLOCK_H], float("-inf"), tl.float32), mask=h_mask)


@triton.jit
def _decode_stage2(
    MidO, MidLse, Out, stride_ot, stride_oh,
    NUM_HEADS: tl.constexpr, NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    base = (b * NUM_HEADS + h) * NUM_SPLITS
    lse = tl.load(MidLse + base + s)
    valid = lse > float("-inf")
    top = tl.max(lse, 0)  # finite: split 0 always holds the first key
    w = tl.where(valid, tl.exp(lse - top), 0.0)
    parts = tl.load(MidO + (base + s)[:, None] * HEAD_DIM + d[None, :],
                    mask=valid[:, None] & d_mask[None, :], other=0.0)  # fmt: skip
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(Out + b * stride_ot + h * stride_oh + d, out.to(Out.dtype.element_ty), mask=d_mask)


@triton.jit
def _extend_fwd(
    Q, K, V, Out, Table, RowIndex, PrefixLens, ExtendStart, SeqLens,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_table, scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    block = tl.program_id(2)
    first = tl.load(ExtendStart + b).to(tl.int32)
    extend_len = tl.load(ExtendStart + b + 1).to(tl.int32) - first
    if block * BLOCK_M >= extend_len:
        return
    prefix = tl.load(PrefixLens + b).to(tl.int32)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    row = tl.load(RowIndex + b).to(tl.int64)
    kv_head = h // GROUP

    i = block * BLOCK_M + tl.arange(0, BLOCK_M)
    i_mask = i < extend_len
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q_rows = (first + i).to(tl.int64)
    q = tl.load(Q + q_rows[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=i_mask[:, None] & d_mask[None, :], other=0.0)  # fmt: skip
    if UPCAST:
        q = q.to(tl.float32)
    q_pos = prefix + i

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    last_key = tl.minimum(seq_len, prefix + (block + 1) * BLOCK_M)  # keys the last query sees
    for n0 in range(0, last_key, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < last_key
        causal = n_mask[None, :] & (n[None, :] <= q_pos[:, None])
        m, denom, acc = _attend_keys(
            q, m, denom, acc, K, V, Table + row * stride_table, n, n_mask, causal,
            kv_head, stride_kt, stride_kh, stride_vt, stride_vh, d, d_mask, scale,
            UPCAST, PRECISION,
        )  # fmt: skip
    out = acc / denom[:, None]
    tl.store(Out + q_rows[:, None] * stride_ot + h * stride_oh + d[None, :],
             out.to(Out.dtype.element_ty), mask=i_mask[:, None] & d_mask[None, :])  # fmt: skip


def _precision(dtype: torch.dtype) -> str:
    """IEEE float32 products for float32 caches (TF32 would lose 13 mantissa bits)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def decode_splits(batch_size: int, num_kv_heads: int, num_sms: int) -> int:
    """Parts per sequence for a decode batch: enough programs to fill the GPU's multiprocessors
    twice over, at most ``MAX_DECODE_SPLITS``, a power of two. Depends on the batch size only
    (not on lengths), so one CUDA graph per batch size fits every step."""
    programs = max(batch_size * num_kv_heads, 1)
    splits = 1
    while splits < MAX_DECODE_SPLITS and programs * splits < 2 * num_sms:
        splits *= 2
    return splits


def _check_common(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if q.dim() != 3 or q.stride(2) != 1:
        raise ValueError(f"q must be [tokens, heads, head_dim] with unit stride, got {q.shape}")
    if k_cache.dim() != 3 or k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
        raise ValueError("k/v caches must be [slots, kv_heads, head_dim] with unit stride")
    if q.shape[1] % k_cache.shape[1] or q.shape[2] != k_cache.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)}")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    row_index: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int,
    out: torch.Tensor | None = None,
    scratch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One decode step's attention: q [B, H, D] -> out [B, H, D] (q's dtype). ``scratch``
    (float32 [B * H * num_splits * D] and [B * H * num_splits]) may be passed to avoid
    allocations (a CUDA graph keeps it); every seq_len must be at least 1."""
    _check_common(q, k_cache, v_cache)
    bs, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    if num_splits & (num_splits - 1) or not 1 <= num_splits <= MAX_DECODE_SPLITS:
        raise ValueError(f"num_splits must be a power of two up to {MAX_DECODE_SPLITS}")
    if out is None:
        out = torch.empty((bs, heads, dim), dtype=q.dtype, device=q.device)
    if scratch is None:
        mid_o = torch.empty(bs * heads * num_splits * dim, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(bs * heads * num_splits, dtype=torch.float32, device=q.device)
    else:
        mid_o, mid_lse = scratch
    if bs == 0:
        return out
    block_d = triton.next_power_of_2(dim)
    upcast = interpreting()
    _decode_stage1[(bs, kv_heads, num_splits)](
        q, k_cache, v_cache, table, row_index, seq_lens, mid_o, mid_lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), table.stride(0),
        scale,
        NUM_HEADS=heads, GROUP=group, NUM_SPLITS=num_splits, HEAD_DIM=dim,
        BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=32 if upcast else 64,
        BLOCK_D=block_d, UPCAST=upcast, PRECISION=_precision(k_cache.dtype),
        num_warps=4, num_stages=2,
    )  # fmt: skip
    _decode_stage2[(bs, heads)](
        mid_o, mid_lse, out, out.stride(0), out.stride(1),
        NUM_HEADS=heads, NUM_SPLITS=num_splits, HEAD_DIM=dim, BLOCK_D=block_d,
        num_warps=4 if dim >= 128 else 2,
    )  # fmt: skip
    return out


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    row_index: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_start: torch.Tensor,
    seq_lens: torch.Tensor,
    max_extend_len: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of an extend step's queries q [T, H, D] over each request's cached
    prefix and its new keys (already stored) -> out [T, H, D] (q's dtype)."""
    _check_common(q, k_cache, v_cache)
    tokens, heads, dim = q.shape
    group = heads // k_cache.shape[1]
    if out is None:
        out = torch.empty((tokens, heads, dim), dtype=q.dtype, device=q.device)
    bs = seq_lens.shape[0]
    if bs == 0 or tokens == 0:
        return out
    upcast = interpreting()
    block_d = triton.next_power_of_2(dim)
    block_m = 16 if upcast else (64 if dim <= 128 else 32)
    block_n = 16 if upcast else (64 if dim <= 64 else 32)
    grid = (bs, heads, triton.cdiv(max_extend_len, block_m))
    _extend_fwd[grid](
        q, k_cache, v_cache, out, table, row_index, prefix_lens, extend_start, seq_lens,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
        table.stride(0), scale,
        GROUP=group, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        UPCAST=upcast, PRECISION=_precision(k_cache.dtype),
        num_warps=4, num_stages=2,
    )  # fmt: skip
    return out
