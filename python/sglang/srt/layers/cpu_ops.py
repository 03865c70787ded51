"""Torch adapter of the fused CPU model kernels (``csrc/include/sglang/kernels/cpu_ops.h``).

A decoder layer on CPU runs: ``fused_add_rms_norm_`` -> qkv projection -> ``rope_kv_store_``
(rotates q in place, writes rotated k and v into the layer's KV cache at the step's
``out_slots``) -> ``paged_decode_attention`` / ``extend_attention`` (keys read through
``req_to_token``) -> o projection -> ``fused_add_rms_norm_`` -> gate/up projection ->
``silu_and_mul`` -> down projection. The step arrays come from ``ForwardBatch``; the caches from
``KVPool`` ([num_slots, kv_heads, head_dim] per layer).

Two ways to call each kernel:

* the plain functions here (``rms_norm``, ``fused_add_rms_norm_``, ...): the eager fast path,
  a few attribute checks and one ``sglang._core`` call (GIL released), no allocation besides the
  output;
* the ``torch.library`` custom ops ``torch.ops.sglang.<name>`` (same signatures, with
  ``register_fake`` and ``mutates_args`` for the in-place ones) for code that is traced or
  compiled; they call the plain functions.

Tensors must be CPU, float32 or bfloat16 (activations, weights, caches and cos/sin of one dtype),
index tensors as documented per function. Wrong inputs raise ``ValueError`` here, or
``sglang.CoreError`` from the core for out-of-range indices (checked there, before any write).
"""

from __future__ import annotations

import torch

from sglang import _core

__all__ = [
    "extend_attention",
    "fused_add_rms_norm_",
    "paged_decode_attention",
    "rms_norm",
    "rope_kv_store_",
    "silu_and_mul",
]

_CODES = {torch.float32: _core.DTYPE_FLOAT32, torch.bfloat16: _core.DTYPE_BFLOAT16}


def _code(t: torch.Tensor, name: str) -> int:
    # (Checks use the cheapest tensor attributes: these calls run ~300 times per decode step.)
    code = _CODES.get(t.dtype)
    if code is None or not t.is_cpu:
        raise ValueError(
            f"{name} must be a float32 or bfloat16 CPU tensor, got {t.dtype} {t.device}"
        )
    return code


def _matrix(t: torch.Tensor, name: str) -> tuple[int, int, int]:
    """(rows, cols, row stride) of a 2-D tensor with contiguous rows."""
    shape, stride = t.shape, t.stride()
    if len(shape) != 2 or (shape[1] > 1 and stride[1] != 1):
        raise ValueError(
            f"{name} must be 2-D with contiguous rows, got shape {tuple(shape)} strides {stride}"
        )
    return shape[0], shape[1], stride[0]


def _same(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.dtype != ref.dtype or not t.is_cpu:
        raise ValueError(f"{name} ({t.dtype}, {t.device}) must match {ref_name} ({ref.dtype}, cpu)")


def _weight(weight: torch.Tensor, x: torch.Tensor, cols: int) -> None:
    if weight.dtype != x.dtype or not weight.is_cpu or weight.shape != (cols,):
        raise ValueError(
            f"weight must be a CPU [{cols}] tensor of x's dtype {x.dtype}, got "
            f"{weight.dtype} {tuple(weight.shape)}"
        )
    if cols > 1 and weight.stride() != (1,):
        raise ValueError("weight must be contiguous")


def _heads(t: torch.Tensor, name: str) -> None:
    """[T, heads, head_dim] with contiguous heads (any token stride)."""
    if t.dim() != 3 or t.stride(2) != 1 or (t.shape[1] > 1 and t.stride(1) != t.shape[2]):
        raise ValueError(
            f"{name} must be [tokens, heads, head_dim] with contiguous heads, got shape "
            f"{tuple(t.shape)} strides {t.stride()}"
        )


def _index(t: torch.Tensor, name: str, dtype: torch.dtype, length: int) -> None:
    if t.dtype != dtype or t.dim() != 1 or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"{name} must be a contiguous 1-D CPU {dtype} tensor")
    if t.shape[0] != length:
        raise ValueError(f"{name} must have {length} elements, got {t.shape[0]}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms_norm(x) * weight`` of x [rows, hidden]; returns a new contiguous tensor.

    Same semantics as ``RMSNorm`` (fp32: ``F.rms_norm``; bf16: normalize in fp32, round to bf16,
    multiply by the bf16 weight).
    """
    code = _code(x, "x")
    rows, cols, stride = _matrix(x, "x")
    _weight(weight, x, cols)
    out = torch.empty_like(x) if stride == cols else torch.empty((rows, cols), dtype=x.dtype)
    _core.rms_norm_cpu(
        x.data_ptr(), code, rows, cols, stride, weight.data_ptr(), eps, out.data_ptr(), cols
    )
    return out


def fused_add_rms_norm_(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> None:
    """In place: ``residual = x + residual``; ``x = rms_norm(residual) * weight`` ([rows, hidden]).

    Equals ``RMSNorm.forward(x, residual)`` with the two results written into x and residual.
    """
    code = _code(x, "x")
    rows, cols, stride = _matrix(x, "x")
    res_rows, res_cols, res_stride = _matrix(residual, "residual")
    _same(residual, x, "residual", "x")
    if res_rows != rows or res_cols != cols:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    _weight(weight, x, cols)
    _core.fused_add_rms_norm_cpu(
        x.data_ptr(),
        code,
        rows,
        cols,
        stride,
        residual.data_ptr(),
        res_stride,
        weight.data_ptr(),
        eps,
    )


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[:, :d]) * x[:, d:]`` of x [rows, 2 * d]; returns [rows, d] (``SiluAndMul``)."""
    code = _code(x, "x")
    rows, cols, stride = _matrix(x, "x")
    if cols % 2:
        raise ValueError(f"x must have an even number of columns, got {cols}")
    d = cols // 2
    out = x.new_empty((rows, d))
    _core.silu_and_mul_cpu(x.data_ptr(), code, rows, d, stride, out.data_ptr(), d)
    return out


def rope_kv_store_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
) -> None:
    """Rotate q in place; write rotated k and v into the caches at ``out_slots``.

    q [T, H, D], k / v [T, KVH, D] (heads contiguous, any token stride: usually views of one qkv
    projection output); positions / out_slots int64 [T] (distinct slots); cos / sin
    [max_positions, D / 2] (``RotaryEmbedding.cos_cache`` / ``sin_cache``); k_cache / v_cache
    [num_slots, KVH, D]. Same rotation as ``RotaryEmbedding.apply``; k and v are not modified.
    """
    code = _code(q, "q")
    _heads(q, "q")
    _heads(k, "k")
    _heads(v, "v")
    for t, name in ((k, "k"), (v, "v"), (cos, "cos"), (sin, "sin")):
        _same(t, q, name, "q")
    for t, name in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        _same(t, q, name, "q")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    tokens, heads, d = q.shape
    kv_heads = k.shape[1]
    if k.shape != (tokens, kv_heads, d) or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} must be [{tokens}, KVH, {d}]")
    if k_cache.shape[1:] != (kv_heads, d) or v_cache.shape != k_cache.shape:
        raise ValueError(f"caches must be [slots, {kv_heads}, {d}], got {tuple(k_cache.shape)}")
    if cos.dim() != 2 or cos.shape[1] * 2 != d or not cos.is_contiguous() or sin.shape != cos.shape:
        raise ValueError(f"cos / sin must be contiguous [max_positions, {d // 2}]")
    if not sin.is_contiguous():
        raise ValueError("sin must be contiguous")
    _index(positions, "positions", torch.int64, tokens)
    _index(out_slots, "out_slots", torch.int64, tokens)
    _core.rope_kv_store_cpu(
        q.data_ptr(),
        q.stride(0),
        k.data_ptr(),
        k.stride(0),
        v.data_ptr(),
        v.stride(0),
        tokens,
        heads,
        kv_heads,
        d,
        positions.data_ptr(),
        cos.data_ptr(),
        sin.data_ptr(),
        cos.shape[0],
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        k_cache.shape[0],
        kv_heads * d,
        out_slots.data_ptr(),
        code,
    )


def _attn_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Checks the shared attention inputs; returns the output and the core's argument tuple."""
    code = _code(q, "q")
    _heads(q, "q")
    tokens, heads, d = q.shape
    for t, name in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        _same(t, q, name, "q")
        if t.dim() != 3 or t.shape[2] != d or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous [slots, kv_heads, {d}]")
    if v_cache.shape != k_cache.shape:
        raise ValueError("k_cache and v_cache shapes differ")
    if req_to_token.dtype != torch.int32 or req_to_token.dim() != 2 or req_to_token.stride(1) != 1:
        raise ValueError("req_to_token must be a 2-D int32 tensor with contiguous rows")
    batch = seq_lens.shape[0]
    _index(req_pool_indices, "req_pool_indices", torch.int64, batch)
    _index(seq_lens, "seq_lens", torch.int32, batch)
    kv_heads = k_cache.shape[1]
    out = torch.empty((tokens, heads, d), dtype=q.dtype)
    args = (
        q.data_ptr(),
        q.stride(0),
        out.data_ptr(),
        heads * d,
        heads,
        kv_heads,
        d,
    )
    kv = (
        code,
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        k_cache.shape[0],
        kv_heads * d,
        req_to_token.data_ptr(),
        req_to_token.shape[0],
        req_to_token.stride(0),
        req_pool_indices.data_ptr(),
        seq_lens.data_ptr(),
        batch,
    )
    return out, args + kv


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention: one query per request; returns out [B, H, D] (q's dtype).

    q [B, H, D] (heads contiguous); caches [num_slots, KVH, D]; req_to_token int32 [rows, ctx];
    req_pool_indices int64 [B]; seq_lens int32 [B] (>= 1). Request b attends over the keys in
    slots ``req_to_token[req_pool_indices[b], :seq_lens[b]]``. GQA when KVH < H.
    """
    if q.dim() == 3 and q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"q has {q.shape[0]} rows but the batch has {seq_lens.shape[0]}")
    out, args = _attn_args(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)
    head = args[:7]
    _core.paged_decode_attention_cpu(*head, scale, *args[7:])
    return out


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_start: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal extend attention of new tokens; returns out [T, H, D] (q's dtype).

    q [T, H, D]: rows ``extend_start[b] .. extend_start[b + 1] - 1`` are request b's new tokens at
    positions ``prefix_lens[b]..``; their K/V must already be in the caches. prefix_lens int32
    [B], extend_start int32 [B + 1], seq_lens int32 [B] (= prefix + new tokens).
    """
    batch = seq_lens.shape[0]
    _index(prefix_lens, "prefix_lens", torch.int32, batch)
    _index(extend_start, "extend_start", torch.int32, batch + 1)
    out, args = _attn_args(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)
    _core.extend_attention_cpu(
        *args[:7], scale, *args[7:], prefix_lens.data_ptr(), extend_start.data_ptr()
    )
    return out


# ---- torch.library custom ops (torch.ops.sglang.*) --------------------------------------------


def _register() -> None:
    lib = "sglang"

    @torch.library.custom_op(f"{lib}::rms_norm", mutates_args=())
    def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    @_rms_norm.register_fake
    def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return x.new_empty(x.shape)

    @torch.library.custom_op(f"{lib}::fused_add_rms_norm_", mutates_args=("x", "residual"))
    def _fused(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
        fused_add_rms_norm_(x, residual, weight, eps)

    @_fused.register_fake
    def _(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
        return None

    @torch.library.custom_op(f"{lib}::silu_and_mul", mutates_args=())
    def _silu(x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x)

    @_silu.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], x.shape[1] // 2))

    @torch.library.custom_op(f"{lib}::rope_kv_store_", mutates_args=("q", "k_cache", "v_cache"))
    def _rope(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out_slots: torch.Tensor,
    ) -> None:
        rope_kv_store_(q, k, v, positions, cos, sin, k_cache, v_cache, out_slots)

    @_rope.register_fake
    def _(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out_slots: torch.Tensor,
    ) -> None:
        return None

    @torch.library.custom_op(f"{lib}::paged_decode_attention", mutates_args=())
    def _decode(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return paged_decode_attention(
            q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale
        )

    @_decode.register_fake
    def _(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return q.new_empty(q.shape)

    @torch.library.custom_op(f"{lib}::extend_attention", mutates_args=())
    def _extend(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        prefix_lens: torch.Tensor,
        extend_start: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return extend_attention(
            q,
            k_cache,
            v_cache,
            req_to_token,
            req_pool_indices,
            prefix_lens,
            extend_start,
            seq_lens,
            scale,
        )

    @_extend.register_fake
    def _(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        prefix_lens: torch.Tensor,
        extend_start: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return q.new_empty(q.shape)


_register()
