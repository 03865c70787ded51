"""The fused Triton elementwise kernels (RMSNorm, RMSNorm with the residual add, SiLU-and-mul)
against the layers' PyTorch forms. Compiled on a GPU, interpreted on CPU (conftest.py)."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.triton_ops import available

pytestmark = pytest.mark.skipif(not available(), reason="needs the triton package")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]


def _ops():
    from sglang.srt.layers.triton_ops import elementwise

    return elementwise


def _rand(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype=dtype, device=DEVICE)


def _norm(hidden: int, dtype: torch.dtype) -> RMSNorm:
    norm = RMSNorm(hidden, 1e-5, dtype=dtype, device=DEVICE)
    norm.weight.data.copy_(_rand(hidden, dtype=dtype, seed=9) + 1)
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 200])
def test_rms_norm_matches_layer(dtype: torch.dtype, hidden: int) -> None:
    norm = _norm(hidden, dtype)
    x = _rand(5, 3, hidden, dtype=dtype, seed=1, scale=3.0)  # leading dims: per-head q/k norms
    ours = _ops().rms_norm(x, norm.weight, norm.eps)
    ref = norm(x)
    assert ours.shape == x.shape and ours.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # one or two bf16 ulps
    torch.testing.assert_close(ours.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_updates_both_in_place(dtype: torch.dtype) -> None:
    norm = _norm(96, dtype)
    x, residual = _rand(7, 96, dtype=dtype, seed=2), _rand(7, 96, dtype=dtype, seed=3)
    ref_out, ref_res = norm(x.clone(), residual.clone())
    _ops().fused_add_rms_norm_(x, residual, norm.weight, norm.eps)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # one or two bf16 ulps
    if DEVICE == "cuda" or dtype == torch.float32:
        assert torch.equal(residual, ref_res)  # x + residual rounded once, as torch does
    else:  # Triton's interpreter rounds float32 -> bfloat16 toward zero, CUDA to nearest
        torch.testing.assert_close(residual.float(), ref_res.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(x.float(), ref_out.float(), atol=tol, rtol=tol)


def test_fused_add_rms_norm_rejects_mismatched_shapes() -> None:
    x, residual = (
        _rand(3, 8, dtype=torch.float32, seed=4),
        _rand(3, 16, dtype=torch.float32, seed=5),
    )
    with pytest.raises(ValueError, match="fused_add_rms_norm_"):
        _ops().fused_add_rms_norm_(x, residual, torch.ones(8, device=DEVICE), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [48, 1500])
def test_silu_and_mul_matches_layer(dtype: torch.dtype, d: int) -> None:
    x = _rand(4, 2 * d, dtype=dtype, seed=6, scale=4.0)
    ref = SiluAndMul()(x.clone())
    ours = _ops().silu_and_mul(x)
    assert ours.shape == (4, d)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # one or two bf16 ulps
    torch.testing.assert_close(ours.float(), ref.float(), atol=tol, rtol=tol)


def test_empty_batches() -> None:
    x = torch.empty(0, 32, device=DEVICE)
    assert _ops().rms_norm(x, torch.ones(32, device=DEVICE), 1e-6).shape == (0, 32)
    assert _ops().silu_and_mul(torch.empty(0, 64, device=DEVICE)).shape == (0, 32)
