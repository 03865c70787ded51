"""Segmented multi-LoRA in Triton: the CUDA path of ``sglang.srt.lora.kernels.lora_apply_``.

Two launches per call (the contract is in ``csrc/include/sglang/kernels/lora.h``):

* ``_shrink``: ``t[r, :k] = scaling[s] * x[r] @ A[s, :k]^T`` into a float32 buffer
  [rows, max_rank] (k = ranks[s]; dot products in float32, IEEE for float32 inputs);
* ``_expand``: ``y[r] += t[r, :k] @ B[s, :, :k]^T``, added in float32 and stored in y's dtype.

Grid: (row tile, rank block) for the shrink, (row tile, output block) for the expand. A row tile
is ``BLOCK_M`` consecutive rows of one segment; each program finds its tile on the GPU from the
segment arrays (tiles counted per segment with a cumulative sum over all segments, which every
program loads: ``BLOCK_G`` >= the segment count), so segments of any length share one launch and
no host loop or synchronisation is needed. Segments with slot -1 (or out of range) or rank 0
get no tiles; the host sizes the tile axis by an upper bound (``cdiv(rows, BLOCK_M)`` + segments)
and the programs past the last tile exit at once. The launch depends on shapes only, so it can
be captured in a CUDA graph. Out-of-range segment values are not reported here (that would need
a host sync) but never read out of bounds: slots outside [0, num_slots) count as -1, ranks are
clamped to [0, max_rank] and segment ends to the row count.

Under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors, tests) 16-bit values are
widened to float32 before any arithmetic and the blocks are small.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang.srt.layers.triton_ops import interpreting


@triton.jit
def _row_tile(Indptr, Slots, Ranks, num_segments, num_rows, num_slots, max_rank,
              BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):  # fmt: skip
    """This program's row tile: (first row, end row, slot, rank); first >= end past the last
    tile. Tiles are numbered segment by segment, BLOCK_M rows each (the last one of a segment
    may be partial); only segments with a valid slot, rank > 0 and rows have tiles."""
    tile = tl.program_id(0)
    g = tl.arange(0, BLOCK_G)
    g_mask = g < num_segments
    lo = tl.minimum(tl.load(Indptr + g, mask=g_mask, other=0), num_rows)
    hi = tl.minimum(tl.load(Indptr + g + 1, mask=g_mask, other=0), num_rows)
    slot = tl.load(Slots + g, mask=g_mask, other=-1)
    valid = g_mask & (slot >= 0) & (slot < num_slots)
    rank = tl.load(Ranks + tl.where(valid, slot, 0), mask=valid, other=0)
    rank = tl.minimum(tl.maximum(rank, 0), max_rank)
    tiles = tl.where(valid & (rank > 0) & (hi > lo), (hi - lo + BLOCK_M - 1) // BLOCK_M, 0)
    ends = tl.cumsum(tiles, 0)  # tiles of segments 0..g
    seg = tl.sum((ends <= tile).to(tl.int32), 0)  # the segment whose tiles contain `tile`
    mine = g == seg  # all false past the last tile
    first = tl.sum(tl.where(mine, lo + (tile - (ends - tiles)) * BLOCK_M, 0), 0)
    end = tl.sum(tl.where(mine, hi, 0), 0)
    return first, end, tl.sum(tl.where(mine, slot, 0), 0), tl.sum(tl.where(mine, rank, 0), 0)


@triton.jit
def _shrink(
    X, A, T, Ranks, Scaling, Indptr, Slots,
    stride_x, stride_t, num_rows, in_features, num_slots, max_rank, num_segments,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    first, end, slot, rank = _row_tile(Indptr, Slots, Ranks, num_segments, num_rows, num_slots,
                                       max_rank, BLOCK_M, BLOCK_G)  # fmt: skip
    r0 = tl.program_id(1) * BLOCK_R
    if (first >= end) | (r0 >= rank):
        return
    rows = (first + tl.arange(0, BLOCK_M)).to(tl.int64)
    m_mask = rows < end
    r = r0 + tl.arange(0, BLOCK_R)
    r_mask = r < rank
    a_rows = A + (slot.to(tl.int64) * max_rank + r) * in_features
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < in_features
        x = tl.load(X + rows[:, None] * stride_x + k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # fmt: skip
        a = tl.load(a_rows[:, None] + k[None, :], mask=r_mask[:, None] & k_mask[None, :],
                    other=0.0)  # fmt: skip
        if UPCAST:
            x = x.to(tl.float32)
            a = a.to(tl.float32)
        acc += tl.dot(x, tl.trans(a), input_precision=PRECISION)
    scale = tl.load(Scaling + slot)
    tl.store(T + rows[:, None] * stride_t + r[None, :], acc * scale,
             mask=m_mask[:, None] & r_mask[None, :])  # fmt: skip


@triton.jit
def _expand(
    T, B, Y, Ranks, Indptr, Slots,
    stride_t, stride_y, num_rows, out_features, num_slots, max_rank, num_segments,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    first, end, slot, rank = _row_tile(Indptr, Slots, Ranks, num_segments, num_rows, num_slots,
                                       max_rank, BLOCK_M, BLOCK_G)  # fmt: skip
    if first >= end:
        return
    rows = (first + tl.arange(0, BLOCK_M)).to(tl.int64)
    m_mask = rows < end
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < out_features
    b_rows = B + (slot.to(tl.int64) * out_features + n) * max_rank
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < rank
        t = tl.load(T + rows[:, None] * stride_t + r[None, :],
                    mask=m_mask[:, None] & r_mask[None, :], other=0.0)  # fmt: skip
        b = tl.load(b_rows[:, None] + r[None, :], mask=n_mask[:, None] & r_mask[None, :],
                    other=0.0).to(tl.float32)  # fmt: skip
        acc += tl.dot(t, tl.trans(b), input_precision=PRECISION)
    y_ptrs = Y + rows[:, None] * stride_y + n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y + acc).to(Y.dtype.element_ty), mask=mask)


def lora_apply_(x: torch.Tensor, y: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                ranks: torch.Tensor, scaling: torch.Tensor, seg_indptr: torch.Tensor,
                seg_slots: torch.Tensor) -> None:  # fmt: skip
    """In place on y; arguments as ``kernels.lora_apply_`` (checked there): x [rows, in], y
    [rows, out] (unit column strides), A / B / ranks / scaling / segments on x's device."""
    num_rows, in_features = x.shape
    num_slots, max_rank, _ = A.shape
    out_features = y.shape[1]
    num_segments = seg_slots.numel()
    if num_rows == 0 or num_segments == 0 or max_rank == 0:
        return
    upcast = interpreting()
    if upcast:
        block_m, block_k, block_n = 16, 32, 32
    else:  # decode-sized segments get 16-row tiles, prefill 64
        block_m = 16 if num_rows <= 32 * num_segments else 64
        block_k, block_n = (128, 64) if block_m == 16 else (64, 64)
    block_r = min(max(16, triton.next_power_of_2(max_rank)), 64)
    block_g = max(16, triton.next_power_of_2(num_segments))
    # fp32 weights: exact IEEE products (TF32 would drop 13 mantissa bits); bf16: the expand's
    # float32 t against bf16 B (exact in TF32) rounds t to TF32, finer than bf16.
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    tiles = triton.cdiv(num_rows, block_m) + num_segments
    t = torch.empty((num_rows, max_rank), dtype=torch.float32, device=x.device)
    _shrink[(tiles, triton.cdiv(max_rank, block_r))](
        x, A, t, ranks, scaling, seg_indptr, seg_slots,
        x.stride(0), t.stride(0), num_rows, in_features, num_slots, max_rank, num_segments,
        BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k, BLOCK_G=block_g,
        UPCAST=upcast, PRECISION=precision, num_warps=4,
    )  # fmt: skip
    _expand[(tiles, triton.cdiv(out_features, block_n))](
        t, B, y, ranks, seg_indptr, seg_slots,
        t.stride(0), y.stride(0), num_rows, out_features, num_slots, max_rank, num_segments,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_G=block_g,
        PRECISION=precision, num_warps=4,
    )  # fmt: skip
