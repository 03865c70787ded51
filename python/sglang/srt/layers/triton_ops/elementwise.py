"""Fused elementwise layers in Triton, one launch each where eager PyTorch takes several:

* ``rms_norm`` / ``fused_add_rms_norm_``: HF ``LlamaRMSNorm`` semantics (statistics in float32,
  the normalised row rounded to the input dtype before the weight is applied); the fused form
  adds the residual first (rounded to the dtype, as ``x + residual`` is) and updates both tensors
  in place: ``x <- norm(x + residual)``, ``residual <- x + residual``.
* ``silu_and_mul``: ``silu(x[:, :d]) * x[:, d:]``, computed in float32, rounded once.
* ``rope_kv_store_``: rotates q in place and writes the rotated k and v into the layer's KV cache
  rows at ``out_slots`` (rotate-half RoPE, the ``RotaryEmbedding`` cos/sin caches, [max_pos,
  D / 2]); q/k/v may be strided views into the qkv projection output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm(
    X, R, W, Y, stride_x, stride_r, stride_y, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(R + row * stride_r + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    normed = (xf * rstd).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _silu_and_mul(X, Y, stride_x, stride_y, d, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rotate_rows(X, stride_row, rows, cos, sin, half, BLOCK_ROWS: tl.constexpr,
                 BLOCK_HALF: tl.constexpr):  # fmt: skip
    """The rows (heads) of one token, rotated: returns (x1', x2') as float32 [rows, half]."""
    r = tl.arange(0, BLOCK_ROWS)
    i = tl.arange(0, BLOCK_HALF)
    mask = (r[:, None] < rows) & (i[None, :] < half)
    ptr = X + r[:, None] * stride_row + i[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + half, mask=mask, other=0.0).to(tl.float32)
    return x1 * cos[None, :] - x2 * sin[None, :], x2 * cos[None, :] + x1 * sin[None, :], mask


@triton.jit
def _rope_kv_store(
    Q, K, V, Cos, Sin, Positions, OutSlots, KCache, VCache,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cos, stride_ct, stride_ch,
    num_q_heads, num_kv_heads, half,
    BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Positions + t).to(tl.int64)
    slot = tl.load(OutSlots + t).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)
    cos = tl.load(Cos + pos * stride_cos + i, mask=i < half, other=0.0).to(tl.float32)
    sin = tl.load(Sin + pos * stride_cos + i, mask=i < half, other=0.0).to(tl.float32)

    q_ptr = Q + t * stride_qt
    q1, q2, q_mask = _rotate_rows(q_ptr, stride_qh, num_q_heads, cos, sin, half, BLOCK_QH,
                                  BLOCK_HALF)  # fmt: skip
    rq = tl.arange(0, BLOCK_QH)[:, None] * stride_qh + i[None, :]
    tl.store(q_ptr + rq, q1.to(Q.dtype.element_ty), mask=q_mask)
    tl.store(q_ptr + rq + half, q2.to(Q.dtype.element_ty), mask=q_mask)

    k1, k2, k_mask = _rotate_rows(K + t * stride_kt, stride_kh, num_kv_heads, cos, sin, half,
                                  BLOCK_KH, BLOCK_HALF)  # fmt: skip
    heads = tl.arange(0, BLOCK_KH)[:, None]
    dst = KCache + slot * stride_ct + heads * stride_ch + i[None, :]
    tl.store(dst, k1.to(KCache.dtype.element_ty), mask=k_mask)
    tl.store(dst + half, k2.to(KCache.dtype.element_ty), mask=k_mask)
    src = V + t * stride_vt + heads * stride_vh + i[None, :]
    dst = VCache + slot * stride_ct + heads * stride_ch + i[None, :]
    tl.store(dst, tl.load(src, mask=k_mask, other=0.0), mask=k_mask)
    tl.store(dst + half, tl.load(src + half, mask=k_mask, other=0.0), mask=k_mask)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.stride(-1) != 1:
        raise ValueError(f"{name} needs unit stride in its last dimension")
    return x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x


def _launch_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    out: torch.Tensor,
    eps: float,
) -> None:
    """One program per row of the 2-D ``x``; ``residual`` (updated in place) when fused."""
    if x.shape[0] == 0:
        return
    block = triton.next_power_of_2(x.shape[1])
    res = x if residual is None else residual
    _rms_norm[(x.shape[0],)](
        x, res, weight, out, x.stride(0), res.stride(0), out.stride(0), x.shape[1], eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=_warps(block),
    )  # fmt: skip


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``norm(x) * weight`` over the last dimension, any leading dims; a new tensor."""
    rows = _rows(x, "rms_norm")
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    _launch_rms_norm(rows, None, weight, out, eps)
    return out.view(x.shape)


def fused_add_rms_norm_(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> None:
    """In place: ``residual += x`` (in the dtype), ``x = norm(residual) * weight``. [T, N]."""
    if x.dim() != 2 or x.shape != residual.shape or x.stride(1) != 1 or residual.stride(1) != 1:
        raise ValueError("fused_add_rms_norm_ needs two [tokens, hidden] row-major tensors")
    _launch_rms_norm(x, residual, weight, x, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2d] -> [T, d]."""
    rows = _rows(x, "silu_and_mul")
    d = rows.shape[1] // 2
    out = torch.empty((rows.shape[0], d), dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        block = min(1024, triton.next_power_of_2(d))
        _silu_and_mul[(rows.shape[0], triton.cdiv(d, block))](
            rows, out, rows.stride(0), out.stride(0), d, BLOCK=block, num_warps=4
        )
    return out.view(*x.shape[:-1], d)


def rope_kv_store_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    positions: torch.Tensor,
    out_slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> None:
    """q [T, H, D] rotated in place; rotated k [T, KVH, D] and v stored at ``out_slots`` of
    ``k_cache`` / ``v_cache`` [slots, KVH, D] (k and v themselves are left as they are)."""
    tokens, q_heads, dim = q.shape
    kv_heads = k.shape[1]
    if dim % 2 or cos_cache.shape[1] * 2 != dim:
        raise ValueError(f"cos/sin caches [*, {cos_cache.shape[1]}] do not fit head_dim {dim}")
    if k.shape != v.shape or k.shape != (tokens, kv_heads, dim):
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [{tokens}, *, {dim}]")
    if any(t.stride(2) != 1 for t in (q, k, v, k_cache, v_cache)):
        raise ValueError("q, k, v and the caches need unit stride along head_dim")
    if k_cache.stride() != v_cache.stride() or k_cache.shape[1:] != (kv_heads, dim):
        raise ValueError("k and v caches must be alike, [slots, kv_heads, head_dim]")
    if tokens == 0:
        return
    half = dim // 2
    _rope_kv_store[(tokens,)](
        q, k, v, cos_cache, sin_cache, positions, out_slots, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos_cache.stride(0), k_cache.stride(0), k_cache.stride(1),
        q_heads, kv_heads, half,
        BLOCK_QH=triton.next_power_of_2(q_heads), BLOCK_KH=triton.next_power_of_2(kv_heads),
        BLOCK_HALF=triton.next_power_of_2(half), num_warps=4,
    )  # fmt: skip


def _warps(block: int) -> int:
    return 1 if block <= 256 else 4 if block <= 2048 else 8
