"""CPU sampling / logit-processing kernels (sglang._core) through the torch adapter, against the
pure-torch reference in sampling_reference.py: exact results for greedy and the in-place
processors, chi-square goodness of fit for sampling, support and reproducibility checks."""

from __future__ import annotations

import pytest
import sampling_reference as ref
import torch
from sglang import _core
from sglang.srt.sampling import kernels

DEVICE = "cpu"


@pytest.mark.parametrize("dtype", ref.DTYPES)
def test_greedy_is_argmax(dtype: torch.dtype) -> None:
    ref.check_greedy(DEVICE, dtype)


@pytest.mark.parametrize("dtype", ref.DTYPES)
def test_penalties_exact(dtype: torch.dtype) -> None:
    ref.check_penalties(DEVICE, dtype)


@pytest.mark.parametrize("dtype", ref.DTYPES)
def test_ban_and_bias_exact(dtype: torch.dtype) -> None:
    ref.check_ban_and_bias(DEVICE, dtype)


def test_empty_lists_change_nothing() -> None:
    ref.check_empty_lists_change_nothing(DEVICE)


@pytest.mark.parametrize("dtype", ref.DTYPES)
def test_bitmask_exact(dtype: torch.dtype) -> None:
    ref.check_bitmask(DEVICE, dtype)


@pytest.mark.parametrize("case", sorted(ref.SAMPLING_CASES))
def test_sampling_distribution(case: str) -> None:
    ref.check_distribution(DEVICE, case)


@pytest.mark.parametrize("case", sorted(ref.SAMPLING_CASES))
def test_large_vocab_support(case: str) -> None:
    ref.check_large_vocab_support(DEVICE, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sixteen_bit_sampling_matches_fp32(dtype: torch.dtype) -> None:
    ref.check_sixteen_bit_sampling_matches_fp32(DEVICE, dtype)


def test_same_seed_and_offset_give_same_token_whatever_the_batch() -> None:
    ref.check_batch_independence(DEVICE)


def test_samples_inside_kept_set() -> None:
    ref.check_inside_kept_set(DEVICE)


def test_threads_do_not_change_results() -> None:
    logits = ref.make_logits(64, 4000, seed=20)
    params = ref.sample_params(64, DEVICE, 1.0, 50, 0.9, 0.0, seed=3)
    one = kernels.sample(logits, **params, num_threads=1)
    assert torch.equal(kernels.sample(logits, **params, num_threads=0), one)
    assert torch.equal(kernels.sample(logits, **params, num_threads=2), one)


def test_sample_leaves_logits_alone_and_accepts_uint64_seeds() -> None:
    logits = ref.make_logits(8, 500, seed=21)
    before = logits.clone()
    params = ref.sample_params(8, DEVICE, 1.0, 0, 1.0, 0.0)
    out = kernels.sample(logits, **params)
    assert torch.equal(logits, before)
    assert out.dtype == torch.int32 and out.shape == (8,)
    if hasattr(torch, "uint64"):
        params["seeds"] = params["seeds"].to(torch.uint64)
        assert torch.equal(kernels.sample(logits, **params), out)
    # Defaults for the filters.
    params.update(top_k=None, top_p=None, min_p=None)
    assert torch.equal(kernels.sample(logits, **params), out)


def test_uniform01_binding() -> None:
    u = [_core.uniform01(42, i) for i in range(1000)]
    assert all(0.0 <= x < 1.0 for x in u)
    assert abs(sum(u) / len(u) - 0.5) < 0.05
    assert _core.uniform01(1, 2) == _core.uniform01(1, 2)
    assert (_core.DTYPE_FLOAT32, _core.DTYPE_FLOAT16, _core.DTYPE_BFLOAT16) == (0, 1, 2)


def test_adapter_rejects_bad_tensors() -> None:
    logits = ref.make_logits(4, 100, seed=22)
    params = ref.sample_params(4, DEVICE, 1.0, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match="dtype"):
        kernels.sample(logits.double(), **params)
    with pytest.raises(ValueError, match="2-D"):
        kernels.sample(logits[0], **params)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.sample(logits.t().contiguous().t(), **params)
    with pytest.raises(ValueError, match="temperature"):
        kernels.sample(logits, **{**params, "temperature": params["temperature"][:3]})
    with pytest.raises(ValueError, match="top_k"):
        kernels.sample(logits, **{**params, "top_k": params["top_k"].long()})
    with pytest.raises(TypeError):
        kernels.sample(logits.numpy(), **params)  # type: ignore[arg-type]
    indptr = torch.tensor([0, 1, 1, 1, 2], dtype=torch.int32)
    ids = torch.tensor([3, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="overlap"):
        kernels.apply_token_ban(logits[:1].expand(4, -1), indptr, ids)
    with pytest.raises(ValueError, match="counts"):
        kernels.apply_penalties(logits, indptr, ids, torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="exceeds"):
        kernels.apply_token_ban(logits, indptr + 1, ids)
    with pytest.raises(ValueError, match="bitmask"):
        kernels.apply_token_bitmask(logits, torch.zeros(2, 4, dtype=torch.int32))


def test_core_rejects_out_of_range_tokens_without_touching_logits() -> None:
    logits = ref.make_logits(2, 100, seed=23)
    before = logits.clone()
    indptr = torch.tensor([0, 1, 2], dtype=torch.int32)
    ids = torch.tensor([3, 100], dtype=torch.int32)
    with pytest.raises(_core.CoreError, match="invalid argument"):
        kernels.apply_token_ban(logits, indptr, ids)
    with pytest.raises(_core.CoreError):
        kernels.apply_penalties(logits, indptr, ids, torch.ones(2, dtype=torch.int32))
    assert torch.equal(logits, before)
