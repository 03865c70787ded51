"""Torch adapter of the GGUF block-quant CPU kernels (``sglang._core``).

A quantized weight arrives from the GGUF loader as stored in the file: a uint8 tensor
[N, row_bytes] (GGUFReader's ``tensor.data`` for a 2-D tensor), row j holding K / block_size
blocks of ggml type ``fmt``. Linear layers call ``quant_matmul`` with activations [..., K]
(float32 / bfloat16 / float16, computed in fp32) and get [..., N] in the activations' dtype.
Semantics and block layouts: ``csrc/include/sglang/kernels/quant.h``.

Two paths, chosen per call from the number of activation rows M:
  * GEMV (decode, M small): ``_core.quant_matmul_cpu`` decodes the blocks in registers; one pass
    over the weight serves ``_core.quant_matmul_rows_per_pass()`` rows (R).
  * GEMM (prefill, M large): the weight is dequantized in row tiles into a reusable fp32 scratch
    buffer and multiplied with ``torch.mm`` (MKL / oneDNN), tile by tile while it is in cache.
The ops are registered as ``torch.ops.sglang.quant_matmul`` / ``dequantize`` / ``quantize_q8_0``
with fake implementations, so ``torch.compile`` can trace models that use them.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import torch

__all__ = [
    "FORMATS",
    "gemm_min_rows",
    "QuantFormatInfo",
    "dequantize",
    "format_info",
    "quant_matmul",
    "quantize_q8_0",
    "row_bytes",
]

_ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Elements of one fp32 weight tile on the GEMM path (32 MiB): a whole projection of a small or
# mid-size model is one dequantize + one torch.mm. Cache-sized tiles (1 MiB) were measured 25%
# slower at a 512-token prefill: more, smaller mm calls plus a copy of each tile's output.
_TILE_ELEMENTS = 1 << 23


def _core():  # the sglang._core extension module
    from sglang import _core

    return _core


@dataclass(frozen=True)
class QuantFormatInfo:
    """One GGUF block format: its ggml type id, values and bytes per block."""

    name: str
    type_id: int
    block_size: int
    block_bytes: int


def _build_formats() -> dict[int, QuantFormatInfo]:
    names = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}
    core = _core()
    return {
        tid: QuantFormatInfo(name, tid, core.quant_block_size(tid), core.quant_block_bytes(tid))
        for tid, name in names.items()
    }


#: The supported formats by ggml type id (sizes come from ``_core``).
FORMATS: dict[int, QuantFormatInfo] = _build_formats()
_BY_NAME = {f.name: f for f in FORMATS.values()}


def format_info(fmt: int | str) -> QuantFormatInfo:
    """The format for a ggml type id (e.g. 3) or name (e.g. ``"Q4_1"``); ValueError if unknown."""
    info = _BY_NAME.get(fmt.upper()) if isinstance(fmt, str) else FORMATS.get(int(fmt))
    if info is None:
        known = ", ".join(f"{f.name}={f.type_id}" for f in FORMATS.values())
        raise ValueError(f"unsupported quant format {fmt!r}; supported: {known}")
    return info


def row_bytes(fmt: int | str, k: int) -> int:
    """Bytes of one weight row of k values (k must be a positive multiple of the block size)."""
    info = format_info(fmt)
    if k <= 0 or k % info.block_size != 0:
        raise ValueError(f"k = {k} is not a positive multiple of {info.name}'s block size")
    return k // info.block_size * info.block_bytes


def _check_weight(weight: torch.Tensor, fmt: int, k: int) -> int:
    """Checks a [N, row_bytes] uint8 CPU weight; returns N."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    expected = row_bytes(fmt, k)
    if weight.dtype != torch.uint8 or weight.dim() != 2 or weight.shape[1] != expected:
        raise ValueError(
            f"weight must be uint8 [N, {expected}] ({format_info(fmt).name} rows of k={k}), "
            f"got {weight.dtype} {tuple(weight.shape)}"
        )
    if weight.device.type != "cpu":
        raise ValueError(f"weight must be a CPU tensor, got {weight.device}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous")
    return weight.shape[0]


def _check_inputs(
    x: torch.Tensor, weight: torch.Tensor, fmt: int, k: int, bias: torch.Tensor | None
) -> int:
    """Checks quant_matmul's arguments; returns N."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _ACT_DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have shape [..., {k}], got {tuple(x.shape)}")
    if x.device.type != "cpu":
        raise ValueError(f"x must be a CPU tensor, got {x.device}")
    n = _check_weight(weight, fmt, k)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != n:
            raise ValueError(f"bias must be a 1-D tensor of {n} elements")
        if not bias.is_floating_point() or bias.device.type != "cpu":
            raise ValueError("bias must be a floating-point CPU tensor")
    return n


# Formats whose float32 products of more than 4R rows take the integer kernels on the SIMD paths
# (16-bit activations; from 16-32 rows the batched integer GEMM, ~2x the BLAS's fp32 sgemm):
# Q4_0, Q4_1, Q8_0 and Q4_K (one scale and offset per 32 values).
INTEGER_FORMATS = frozenset({2, 3, 8, 12})


def _use_gemm(m: int, fmt: int | None) -> bool:
    """Whether M rows go to the dequantize + torch.mm path instead of the C++ kernel.

    float32 rows of Q4_0/Q4_1/Q8_0/Q4_K (``fmt`` in INTEGER_FORMATS) never do on the
    AVX2/AVX-512 paths: the integer kernels serve every M (for the first three the decode
    kernel below 16-32 rows; the batched GEMM above) and do twice the BLAS's fp32 work per
    cycle. For Q5_K and Q6_K (fp32 kernels,
    R = ``rows_per_pass`` rows per pass over the weights), and for bfloat16 rows (``fmt`` None:
    the BLAS's bf16 GEMM), whether dequantizing tiles for the BLAS pays off depends on the
    machine (its sgemm, AMX) and on torch's OpenMP threads, which spin after each mm and stall
    the kernels' own pool on small core counts: measured once per process and ISA path
    (``_gemm_beats_kernel``), never assumed. Up to 4R rows the kernel always runs (it reads the
    weights once; the GEMM path would dequantize them all).
    """
    if m <= 4 * _core().quant_matmul_rows_per_pass():
        return False
    isa = _core().cpu_isa()
    if fmt in INTEGER_FORMATS and isa != "scalar":
        return False
    return m >= gemm_min_rows(isa)


GEMM_PROBE_ROWS = (32, 64, 128, 256, 512)


@functools.lru_cache(maxsize=4)
def gemm_min_rows(isa: str) -> float:
    """The fewest rows from which the GEMM path beats the kernel on this machine (inf: never):
    the smallest probe size where it is 10% faster (~0.2 s, once per process and ISA path;
    the ModelRunner calls it at load time so no request pays for it)."""
    for m in GEMM_PROBE_ROWS:
        if _gemm_beats_kernel(m):
            return m
    return float("inf")


def _gemm_beats_kernel(m: int, repeats: int = 3) -> bool:
    """Times both paths on a synthetic Q6_K [1536, 512] weight (a format on the fp32 kernels)
    with m rows."""
    core = _core()
    fmt, n, k = 14, 1536, 512
    gen = torch.Generator().manual_seed(0)
    weight = torch.randint(0, 256, (n, row_bytes(fmt, k)), dtype=torch.uint8, generator=gen)
    scale = torch.tensor([2**-7], dtype=torch.float16).view(torch.uint8)
    weight.view(n, k // 256, 210)[:, :, 208:] = scale  # a sane d field
    x = torch.randn(m, k, generator=gen)
    out = torch.empty(m, n)

    def kernel() -> None:
        core.quant_matmul_cpu(
            fmt, weight.data_ptr(), n, k, x.data_ptr(), m, k, 0, out.data_ptr(), n
        )

    def gemm() -> None:
        _gemm_path(x, weight, fmt, k, out)

    best = {}
    for name, fn in (("kernel", kernel), ("gemm", gemm)):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    return best["gemm"] < 0.9 * best["kernel"]


class _Scratch(threading.local):
    """A per-thread fp32 buffer reused by the GEMM path (grown, never shrunk)."""

    buf: torch.Tensor | None = None

    def get(self, numel: int) -> torch.Tensor:
        if self.buf is None or self.buf.numel() < numel:
            self.buf = torch.empty(numel, dtype=torch.float32)
        return self.buf[:numel]


_scratch = _Scratch()


def _gemm_path(x: torch.Tensor, weight: torch.Tensor, fmt: int, k: int, out: torch.Tensor) -> None:
    """out[M, N] = x @ dequant(W)^T, dequantizing row tiles into the scratch buffer."""
    core, n = _core(), weight.shape[0]
    tile_rows = max(1, min(n, _TILE_ELEMENTS // k))
    tile = _scratch.get(tile_rows * k).view(tile_rows, k)
    for j0 in range(0, n, tile_rows):
        rows = min(tile_rows, n - j0)
        w = tile[:rows]
        # One thread: the tile is small next to its mm, and the core's pool would compete with
        # torch's OpenMP threads, which keep spinning for a while after each mm.
        core.dequantize_cpu(fmt, weight[j0].data_ptr(), rows, k, w.data_ptr(), k, 1)
        if rows == n:
            torch.mm(x, w.t(), out=out)
        else:
            out[:, j0 : j0 + rows] = torch.mm(x, w.t())


def _gemm_bf16(x: torch.Tensor, weight: torch.Tensor, fmt: int, k: int) -> torch.Tensor:
    """bfloat16 [M, N] = x (bfloat16) @ dequant(W)^T with bfloat16 tiles: the prefill of a model
    run in bfloat16 (``--dtype bfloat16``) gets the BLAS's bf16 GEMM (AMX / AVX-512 BF16), the
    precision the user chose for the activations; float32 inputs never come here."""
    core, n = _core(), weight.shape[0]
    tile_rows = max(1, min(n, _TILE_ELEMENTS // k))
    tile = _scratch.get(tile_rows * k).view(tile_rows, k)
    tile16 = torch.empty((tile_rows, k), dtype=torch.bfloat16)
    out = torch.empty((x.shape[0], n), dtype=torch.bfloat16)
    for j0 in range(0, n, tile_rows):
        rows = min(tile_rows, n - j0)
        core.dequantize_cpu(fmt, weight[j0].data_ptr(), rows, k, tile.data_ptr(), k, 1)
        w = tile16[:rows]
        w.copy_(tile[:rows])
        if rows == n:
            torch.mm(x, w.t(), out=out)
        else:
            out[:, j0 : j0 + rows] = torch.mm(x, w.t())
    return out


def _quant_matmul_2d(
    x: torch.Tensor, weight: torch.Tensor, fmt: int, k: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """fp32 [M, N] result for fp32 x [M, K] (row stride may exceed K)."""
    core = _core()
    m, n = x.shape[0], weight.shape[0]
    out = torch.empty((m, n), dtype=torch.float32)
    if m == 0 or n == 0:
        return out
    bias32 = None if bias is None else bias.to(torch.float32).contiguous()
    if _use_gemm(m, fmt):
        _gemm_path(x.contiguous(), weight, fmt, k, out)
        if bias32 is not None:
            out += bias32
        return out
    core.quant_matmul_cpu(
        fmt,
        weight.data_ptr(),
        n,
        k,
        x.data_ptr(),
        m,
        x.stride(0),
        0 if bias32 is None else bias32.data_ptr(),
        out.data_ptr(),
        n,
    )
    return out


def _quant_matmul_impl(
    x: torch.Tensor, weight: torch.Tensor, fmt: int, k: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """The body of ``torch.ops.sglang.quant_matmul``."""
    _check_inputs(x, weight, fmt, k, bias)
    if x.dtype == torch.bfloat16 and _use_gemm(x.numel() // k, None):
        out = _gemm_bf16(x.reshape(-1, k).contiguous(), weight, fmt, k)
        if bias is not None:
            out += bias.to(torch.bfloat16)
        return out.reshape(*x.shape[:-1], weight.shape[0])
    plain = x.dim() == 2 and x.dtype == torch.float32  # the decode case: no reshape, no cast
    x2 = x if plain else x.reshape(-1, k).to(torch.float32)
    if (k > 1 and x2.stride(1) != 1) or (x2.shape[0] > 1 and x2.stride(0) < k):
        x2 = x2.contiguous()  # the kernel takes a row stride, but needs unit column stride
    out = _quant_matmul_2d(x2, weight, fmt, k, bias)
    return out if plain else out.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("sglang::quant_matmul", mutates_args=())
def _quant_matmul_op(
    x: torch.Tensor, weight: torch.Tensor, fmt: int, k: int, bias: torch.Tensor | None
) -> torch.Tensor:
    return _quant_matmul_impl(x, weight, fmt, k, bias)


@_quant_matmul_op.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, fmt: int, k: int, bias: torch.Tensor | None
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("sglang::dequantize", mutates_args=())
def _dequantize_op(weight: torch.Tensor, fmt: int, k: int) -> torch.Tensor:
    n = _check_weight(weight, fmt, k)
    out = torch.empty((n, k), dtype=torch.float32)
    if n > 0:
        _core().dequantize_cpu(fmt, weight.data_ptr(), n, k, out.data_ptr(), k)
    return out


@_dequantize_op.register_fake
def _(weight: torch.Tensor, fmt: int, k: int) -> torch.Tensor:
    return weight.new_empty((weight.shape[0], k), dtype=torch.float32)


@torch.library.custom_op("sglang::quantize_q8_0", mutates_args=())
def _quantize_q8_0_op(w: torch.Tensor) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dtype != torch.float32 or w.dim() != 2:
        raise ValueError("w must be a float32 [N, K] tensor")
    if w.device.type != "cpu":
        raise ValueError(f"w must be a CPU tensor, got {w.device}")
    n, k = w.shape
    out = torch.empty((n, row_bytes(8, k)), dtype=torch.uint8)
    if n > 0:
        _core().quantize_q8_0_cpu(w.contiguous().data_ptr(), n, k, out.data_ptr())
    return out


@_quantize_q8_0_op.register_fake
def _(w: torch.Tensor) -> torch.Tensor:
    return w.new_empty((w.shape[0], w.shape[1] // 32 * 34), dtype=torch.uint8)


def quant_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    fmt: int | str,
    k: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[..., N] = x[..., K] @ dequant(weight)^T (+ bias), in x's dtype (computed in fp32).

    weight: uint8 [N, row_bytes(fmt, K)] CPU tensor of ggml blocks; fmt: ggml type id or name.
    Eager calls skip the torch dispatcher (about 30 us per call, as much as a decode-sized
    GEMV); under torch.compile the registered op is traced.
    """
    fmt_id = format_info(fmt).type_id
    if torch.compiler.is_compiling():
        return torch.ops.sglang.quant_matmul(x, weight, fmt_id, k, bias)
    return _quant_matmul_impl(x, weight, fmt_id, k, bias)


def dequantize(weight: torch.Tensor, fmt: int | str, k: int) -> torch.Tensor:
    """float32 [N, K] values of a uint8 [N, row_bytes] block tensor (bit-exact with ggml)."""
    return torch.ops.sglang.dequantize(weight, format_info(fmt).type_id, k)


def quantize_q8_0(w: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 32 * 34] Q8_0 blocks of a float32 [N, K] tensor (ggml's reference rounding)."""
    return torch.ops.sglang.quantize_q8_0(w)
