"""GGUF block-quant CPU kernels (sglang._core, through the torch adapter
sglang.srt.layers.quantization.kernels) against the `gguf` package's reference dequantization:
quant_matmul vs x @ dequant(W)^T in float64 on every ISA path, dequantize bit-exact, Q8_0
quantization byte-exact, argument checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
import torch
from sglang import _core
from sglang.srt.layers.quantization import kernels

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

FORMAT_IDS = [2, 3, 8, 12, 13, 14]
N_VALUES = [1, 3, 67, 130]
K_BLOCKS = [1, 3, 7]
M_VALUES = [1, 2, 3, 5, 8, 17, 64, 130]
RTOL = 1e-4


def _has_avx512() -> bool:
    return _core.best_cpu_isa() == "avx512"


ISAS = [
    "scalar",
    "avx2",
    pytest.param("avx512", marks=pytest.mark.skipif(not _has_avx512(), reason="CPU lacks AVX-512")),
]


@pytest.fixture(autouse=True)
def _restore_isa() -> Iterator[None]:
    yield
    _core.set_cpu_isa("auto")


@cache
def _blocks(fmt: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, row_bytes] of random blocks: quantized random floats for the 32-value formats,
    random bytes with small finite fp16 scales (2^-8..2^-4) for the K-quants."""
    rng = np.random.default_rng(seed * 1000 + fmt * 7 + n * 13 + k)
    if fmt in (2, 3, 8):
        return gguf_quantize(rng.standard_normal((n, k)).astype(np.float32), GT(fmt))
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[GT(fmt)]
    raw = rng.integers(0, 256, (n, k // block_size, block_bytes), dtype=np.uint8)
    scales = np.exp2(rng.uniform(-8, -4, (n, k // block_size, 2))).astype(np.float16)
    scale_bytes = scales.view(np.uint8).reshape(n, k // block_size, 4)
    if fmt == 14:  # Q6_K: d at the end
        raw[..., 208:210] = scale_bytes[..., :2]
    else:  # Q4_K / Q5_K: d, dmin first
        raw[..., 0:4] = scale_bytes
    return raw.reshape(n, -1)


@cache
def _reference(fmt: int, n: int, k: int) -> np.ndarray:
    return gguf_dequantize(_blocks(fmt, n, k), GT(fmt)).astype(np.float32).reshape(n, k)


def _block_size(fmt: int) -> int:
    return kernels.format_info(fmt).block_size


def _core_matmul(
    w: np.ndarray, fmt: int, k: int, x: np.ndarray, bias: np.ndarray | None, ld_pad: int
) -> np.ndarray:
    """Calls _core.quant_matmul_cpu directly with padded row strides (ldx = k + pad, ...)."""
    m, n = x.shape[0], w.shape[0]
    xs = np.zeros((m, k + ld_pad), np.float32)
    xs[:, :k] = x
    out = np.full((m, n + ld_pad), np.nan, np.float32)
    _core.quant_matmul_cpu(
        fmt,
        w.ctypes.data,
        n,
        k,
        xs.ctypes.data,
        m,
        k + ld_pad,
        0 if bias is None else bias.ctypes.data,
        out.ctypes.data,
        n + ld_pad,
    )
    assert np.isnan(out[:, n:]).all(), "wrote past the n columns of a padded output row"
    return out[:, :n]


def _check_close(got: np.ndarray, ref: np.ndarray, what: str, rtol: float = RTOL) -> None:
    """Max abs error relative to max |ref| at most rtol."""
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - ref).max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMAT_IDS)
def test_matmul_matches_reference_on_every_path(isa: str, fmt: int) -> None:
    _core.set_cpu_isa(isa)
    assert _core.cpu_isa() == isa
    rng = np.random.default_rng(fmt)
    for n in N_VALUES:
        for kb in K_BLOCKS:
            k = kb * _block_size(fmt)
            w = _blocks(fmt, n, k)
            ref_w = _reference(fmt, n, k).astype(np.float64)
            for i, m in enumerate(M_VALUES):
                x = rng.standard_normal((m, k)).astype(np.float32)
                bias = rng.standard_normal(n).astype(np.float32) if i % 2 else None
                pad = 3 if i % 3 == 1 else 0
                got = _core_matmul(w, fmt, k, x, bias, pad)
                ref = x.astype(np.float64) @ ref_w.T + (0.0 if bias is None else bias)
                _check_close(got, ref, f"{isa} fmt={fmt} n={n} k={k} m={m} pad={pad}")


def _decode_x_cases(rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
    """[4, k] float32 x rows that stress the decode path's per-block 16-bit quantization of x."""
    base = rng.standard_normal((4, k)).astype(np.float32)
    outlier = base.copy()
    pos = rng.integers(0, 32, (4, k // 32)) + 32 * np.arange(k // 32)
    np.put_along_axis(outlier, pos, np.where(rng.random(pos.shape) < 0.5, -1e3, 1e3), axis=1)
    zero_block = base.copy()
    zero_block[:, :32] = 0.0
    return {
        "normal": base,
        "large": base * 1e6,
        "tiny": base * 1e-6,
        "one huge outlier per block": outlier,
        "all negative": -np.abs(base) - 0.5,
        "all positive, equal": np.full((4, k), 3.0, np.float32),
        "a zero block": zero_block,
    }


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", [2, 3, 8])
def test_decode_rows_integer_path_edge_cases(isa: str, fmt: int) -> None:
    """m = 1..4 (the decode GEMV: on AVX2 / AVX-512 the 32-value formats quantize x to 16 bits
    per block and take integer dot products) against the float64 reference, on x that breaks a
    wrong block scale, offset (Q4_0's -8, Q4_1's min) or int16 range: huge / tiny magnitudes, one
    outlier per block (x16 at its +-32639 limits), all-negative rows, a zero block, k = 32."""
    _core.set_cpu_isa(isa)
    rng = np.random.default_rng(100 + fmt)
    n = 67
    for k in (32, 96, 1024):
        w = _blocks(fmt, n, k)
        ref_w = _reference(fmt, n, k).astype(np.float64)
        for name, xs in _decode_x_cases(rng, k).items():
            for m in (1, 2, 3, 4):
                x = xs[:m]
                got = _core_matmul(w, fmt, k, x, None, 1 if m % 2 else 0)
                ref = x.astype(np.float64) @ ref_w.T
                _check_close(got, ref, f"{isa} fmt={fmt} k={k} m={m} x={name}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", [2, 3, 8, 12])
def test_batched_integer_path_edge_cases(isa: str, fmt: int) -> None:
    """The batched integer GEMM (x rows in the SIMD lanes: from 16 rows with AVX-512 VNNI, 32
    with AVX2; Q4_0/Q4_1/Q8_0 and Q4_K, whose 32-value sub-blocks have one scale and offset
    each) on the same hard x as the decode rows, stacked with random rows: row
    counts that leave partial lane tiles (17, 33, 71), weight rows that leave partial panels
    (n = 67), every row against the float64 reference."""
    _core.set_cpu_isa(isa)
    rng = np.random.default_rng(200 + fmt)
    n = 67
    for k in (32, 1024) if fmt < 12 else (256, 1024):
        w = _blocks(fmt, n, k)
        ref_w = _reference(fmt, n, k).astype(np.float64)
        for name, xs in _decode_x_cases(rng, k).items():
            for m in (17, 33, 71):
                x = rng.standard_normal((m, k)).astype(np.float32)
                x[m - 4 :] = xs  # the hard rows land in the last, partial tile
                x[:4] = xs  # and in the first, full one
                got = _core_matmul(w, fmt, k, x, None, 1 if m % 2 else 0)
                ref = x.astype(np.float64) @ ref_w.T
                for i in range(m):  # per row: the hard rows' scale differs from the others'
                    _check_close(got[i], ref[i], f"{isa} fmt={fmt} k={k} m={m} x={name} row={i}")


def test_batched_rows_nan_stays_in_its_row() -> None:
    """A NaN in one x row of a batched call makes that row's outputs NaN and no other's."""
    fmt, n, k, m = 3, 50, 64, 40
    w = _blocks(fmt, n, k)
    x = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    x[21, 40] = np.nan
    got = _core_matmul(w, fmt, k, x, None, 0)
    assert np.isnan(got[21]).all()
    assert np.isfinite(np.delete(got, 21, axis=0)).all()


def test_decode_rows_nan_x_gives_nan() -> None:
    """A NaN in x shows up in the output (the integer path must not turn it into a number)."""
    fmt, n, k = 3, 8, 64
    w = _blocks(fmt, n, k)
    x = np.ones((1, k), np.float32)
    x[0, 40] = np.nan
    got = _core_matmul(w, fmt, k, x, None, 0)
    assert np.isnan(got).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMAT_IDS)
def test_dequantize_is_bit_exact(isa: str, fmt: int) -> None:
    _core.set_cpu_isa(isa)
    for n in (1, 67):
        k = 3 * _block_size(fmt)
        got = kernels.dequantize(torch.from_numpy(_blocks(fmt, n, k)), fmt, k)
        assert got.dtype == torch.float32 and got.shape == (n, k)
        np.testing.assert_array_equal(got.numpy(), _reference(fmt, n, k))


def test_dequantize_strided_output() -> None:
    fmt, n, k = 12, 5, 512
    w = _blocks(fmt, n, k)
    out = np.full((n, k + 7), np.nan, np.float32)
    _core.dequantize_cpu(fmt, w.ctypes.data, n, k, out.ctypes.data, k + 7)
    np.testing.assert_array_equal(out[:, :k], _reference(fmt, n, k))
    assert np.isnan(out[:, k:]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_torch_op_dtypes_leading_dims_and_both_paths(dtype: torch.dtype, m: int) -> None:
    """m = 40 (x 2 leading rows) exceeds 4 * rows_per_pass on every ISA: float32 takes the
    batched integer GEMM, bfloat16 the dequantize + bf16 mm path where the probe found it
    faster."""
    fmt, n, k = 3, 67, 96
    torch.manual_seed(m)
    w = torch.from_numpy(_blocks(fmt, n, k))
    x = torch.randn(2, m, k).to(dtype)
    bias = torch.randn(n)
    got = kernels.quant_matmul(x, w, "Q4_1", k, bias)
    assert got.dtype == dtype and got.shape == (2, m, n)
    ref = x.double().reshape(-1, k) @ torch.from_numpy(_reference(fmt, n, k)).double().T
    ref = (ref + bias.double()).reshape(2, m, n)
    tol = RTOL if dtype == torch.float32 else 1e-2  # the output is rounded to x's dtype
    _check_close(got.double().numpy(), ref.numpy(), f"{dtype} m={m}", tol)


def test_gemm_path_tiles_large_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight larger than one scratch tile goes through several dequantize + mm tiles."""
    calls = []
    gemm_path = kernels._gemm_path
    monkeypatch.setattr(kernels, "_gemm_path", lambda *a: calls.append(1) or gemm_path(*a))
    monkeypatch.setattr(kernels, "gemm_min_rows", lambda isa: 0)  # whatever this CPU measured
    fmt, k = 14, 256  # Q6_K: a format on the fp32 kernels
    n = kernels._TILE_ELEMENTS // k + 37
    torch.manual_seed(1)
    w = torch.from_numpy(_blocks(fmt, n, k))
    x = torch.randn(4 * _core.quant_matmul_rows_per_pass() + 1, k)
    got = kernels.quant_matmul(x, w, fmt, k)
    ref = x.double() @ torch.from_numpy(_reference(fmt, n, k)).double().T
    _check_close(got.double().numpy(), ref.numpy(), "tiled gemm path")
    assert calls == [1]
    kernels.quant_matmul(x[:1], w, fmt, k)  # one row: the GEMV kernel
    assert calls == [1]


def test_gemm_path_only_where_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The BLAS path is taken from the measured crossover on, never for decode-sized inputs."""
    rows = kernels.gemm_min_rows(_core.cpu_isa())
    assert rows == float("inf") or rows in kernels.GEMM_PROBE_ROWS
    r = _core.quant_matmul_rows_per_pass()
    monkeypatch.setattr(kernels, "gemm_min_rows", lambda isa: 64)
    for fmt in (13, 14, None):  # Q5_K, Q6_K, and bfloat16 rows of any format
        assert not kernels._use_gemm(4 * r, fmt) and not kernels._use_gemm(63, fmt)
        assert kernels._use_gemm(64, fmt) and kernels._use_gemm(4096, fmt)
    for fmt in kernels.INTEGER_FORMATS:  # float32 rows: the integer kernels at every size
        assert kernels._use_gemm(4096, fmt) == (_core.cpu_isa() == "scalar")
    monkeypatch.setattr(kernels, "gemm_min_rows", lambda isa: float("inf"))
    assert not kernels._use_gemm(4096, 14)


def test_non_contiguous_rows_of_x() -> None:
    fmt, n, k = 14, 3, 256
    torch.manual_seed(2)
    w = torch.from_numpy(_blocks(fmt, n, k))
    ref_w = torch.from_numpy(_reference(fmt, n, k)).double()
    x = torch.randn(2, k + 10)[:, 5 : 5 + k]
    got = kernels.quant_matmul(x, w, fmt, k)
    _check_close(got.double().numpy(), (x.double() @ ref_w.T).numpy(), "strided x")
    for x in (torch.randn(k, 3).t(), torch.randn(1, k).expand(3, k)):  # column / zero row stride
        got = kernels.quant_matmul(x, w, fmt, k)
        _check_close(got.double().numpy(), (x.double() @ ref_w.T).numpy(), "odd strides")


def test_torch_compile_traces_the_op() -> None:
    fmt, n, k = 2, 8, 64
    w = torch.from_numpy(_blocks(fmt, n, k))
    x = torch.randn(3, k)
    compiled = torch.compile(lambda a: kernels.quant_matmul(a, w, fmt, k), backend="eager")
    torch.testing.assert_close(compiled(x), kernels.quant_matmul(x, w, fmt, k))
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fx, fw = mode.from_tensor(x.reshape(1, 3, k)), mode.from_tensor(w)
    with mode:
        assert torch.ops.sglang.quant_matmul(fx, fw, fmt, k, None).shape == (1, 3, n)


@pytest.mark.parametrize("n,k", [(1, 32), (7, 96), (64, 576)])
def test_quantize_q8_0_matches_gguf_bytes(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 10, (n, 1))).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block (d = 0)
    got = kernels.quantize_q8_0(torch.from_numpy(w))
    assert got.dtype == torch.uint8 and got.shape == (n, k // 32 * 34)
    np.testing.assert_array_equal(got.numpy(), gguf_quantize(w, GT.Q8_0))
    back = kernels.dequantize(got, "Q8_0", k).numpy()
    assert np.abs(back - w).max() <= np.abs(w).max() / 127 + 1e-6


def test_format_table() -> None:
    for fmt in FORMAT_IDS:
        info = kernels.format_info(fmt)
        assert (info.block_size, info.block_bytes) == gguf.GGML_QUANT_SIZES[GT(fmt)]
        assert kernels.format_info(info.name) == info
        assert kernels.row_bytes(fmt, 2 * info.block_size) == 2 * info.block_bytes


def test_invalid_arguments_raise_clear_errors() -> None:
    w = torch.from_numpy(_blocks(2, 4, 64))
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="unsupported quant format"):
        kernels.quant_matmul(x, w, 5, 64)
    with pytest.raises(ValueError, match="multiple"):
        kernels.quant_matmul(torch.randn(2, 48), w, 2, 48)
    with pytest.raises(ValueError, match="x must have shape"):
        kernels.quant_matmul(torch.randn(2, 32), w, 2, 64)
    with pytest.raises(ValueError, match="uint8"):
        kernels.quant_matmul(x, w.float(), 2, 64)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        kernels.quant_matmul(x.double(), w, 2, 64)
    with pytest.raises(ValueError, match="bias"):
        kernels.quant_matmul(x, w, 2, 64, torch.randn(3))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.quant_matmul(x, torch.from_numpy(_blocks(2, 8, 64))[::2], 2, 64)
    # The core's own checks (what a caller of the raw bindings gets).
    out = np.empty((2, 4), np.float32)
    xs = x.numpy()
    with pytest.raises(_core.CoreError, match="unsupported quant format"):
        _core.quant_matmul_cpu(9, w.data_ptr(), 4, 64, xs.ctypes.data, 2, 64, 0, out.ctypes.data, 4)
    with pytest.raises(_core.CoreError, match="not a positive multiple"):
        _core.quant_matmul_cpu(2, w.data_ptr(), 4, 40, xs.ctypes.data, 2, 64, 0, out.ctypes.data, 4)
    with pytest.raises(_core.CoreError, match="invalid argument"):
        _core.quant_matmul_cpu(2, 0, 4, 64, xs.ctypes.data, 2, 64, 0, out.ctypes.data, 4)
    with pytest.raises(_core.CoreError, match="invalid argument"):
        _core.quant_matmul_cpu(2, w.data_ptr(), 4, 64, 0, 2, 64, 0, out.ctypes.data, 4)
    with pytest.raises(_core.CoreError, match="invalid argument"):
        _core.quant_matmul_cpu(2, w.data_ptr(), 4, 64, xs.ctypes.data, 2, 64, 0, 0, 4)
    with pytest.raises(_core.CoreError, match="invalid argument"):  # ldx < k with 2 rows
        _core.quant_matmul_cpu(2, w.data_ptr(), 4, 64, xs.ctypes.data, 2, 32, 0, out.ctypes.data, 4)
    with pytest.raises(_core.CoreError, match="invalid argument"):
        _core.dequantize_cpu(2, 0, 4, 64, out.ctypes.data, 64)
    with pytest.raises(_core.CoreError, match="invalid argument"):
        _core.quantize_q8_0_cpu(0, 2, 64, out.ctypes.data)


def test_env_cap_selects_avx2_in_a_subprocess() -> None:
    code = (
        "import numpy as np, torch\n"
        "from sglang import _core\n"
        "from sglang.srt.layers.quantization import kernels\n"
        "assert _core.cpu_isa() == 'avx2', _core.cpu_isa()\n"
        "w = kernels.quantize_q8_0(torch.full((2, 32), 127.0))\n"
        "y = kernels.quant_matmul(torch.ones(1, 32), w, 8, 32)\n"
        "assert torch.allclose(y, torch.full((1, 2), 127.0 * 32)), y\n"
        "print('ok')\n"
    )
    env = dict(os.environ, SGLANG_CPU_ISA="avx2")
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
