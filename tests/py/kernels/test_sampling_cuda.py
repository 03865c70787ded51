"""CUDA sampling / logit-processing kernels (sglang._cuda) through the torch adapter: the checks
of test_sampling_cpu.py on a GPU (shared in sampling_reference.py), plus CPU-vs-CUDA agreement:
exact for greedy and the in-place processors, in distribution (and nearly always the very same
token, since both use the same uniform draw) for sampling. Skipped without a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import sampling_reference as ref
import torch
from scipy import stats
from sglang.srt.sampling import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = "cuda"


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


def test_launcher_errors_are_statuses_and_core_errors() -> None:
    """sglang._cuda returns a failed check as a Status (it never throws: a C++ exception thrown
    there killed the process on the GPU image); the adapter raises CoreError. Logits untouched."""
    from sglang import _core

    logits = ref.make_logits(2, 100, seed=23).cuda()
    before = logits.clone()
    rows, vocab = logits.shape
    stream = torch.cuda.current_stream().cuda_stream
    cuda = kernels._cuda()
    for dtype in (0, 7):  # a null indptr; an unknown dtype code
        status = cuda.apply_token_ban_cuda(logits.data_ptr(), dtype, rows, vocab, vocab, 0, 0,
                                           stream)
        assert cuda.status_string(status) == "invalid argument"
    indptr = torch.tensor([0, 1, 2], dtype=torch.int32, device="cuda")
    with pytest.raises(_core.CoreError, match="apply_token_ban_cuda: invalid argument"):
        kernels._run(logits, "apply_token_ban", logits.data_ptr(), 0, rows, vocab, vocab,
                     indptr.data_ptr(), 0)
    assert torch.equal(logits, before)


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


# ---- CPU vs CUDA --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ref.DTYPES)
@pytest.mark.parametrize("vocab", [1000, 151936 + 7])
def test_greedy_cpu_equals_cuda(dtype: torch.dtype, vocab: int) -> None:
    logits = ref.make_logits(33, vocab, seed=30).to(dtype)
    params = ref.sample_params(33, "cpu", 0.0, 0, 1.0, 0.0)
    cpu = kernels.sample(logits, **params)
    gpu = kernels.sample(logits.cuda(), **{k: v.cuda() for k, v in params.items()})
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", ref.DTYPES)
def test_processors_cpu_equal_cuda(dtype: torch.dtype) -> None:
    rows, vocab = 64, 32000
    logits = ref.make_logits(rows, vocab, seed=31).to(dtype)
    indptr, ids, counts = ref.random_csr(rows, vocab, seed=32, max_len=200)
    g = torch.Generator().manual_seed(33)
    freq = torch.rand(rows, generator=g)
    pres = torch.rand(rows, generator=g)
    rep = 1 + torch.rand(rows, generator=g)
    bias = torch.randn(ids.numel(), generator=g)
    bitmask = torch.randint(-(2**31), 2**31, (rows, (vocab + 31) // 32), generator=g)
    bitmask = bitmask.to(torch.int32)
    row_indices = torch.randint(-1, rows, (rows,), generator=g, dtype=torch.int32)

    def run(device: str) -> torch.Tensor:
        x = logits.to(device)
        on = [t.to(device) for t in (indptr, ids, counts, freq, pres, rep, bias, bitmask)]
        kernels.apply_penalties(x, *on[:6])
        kernels.apply_token_ban(x, on[0], on[1])
        kernels.apply_token_bitmask(x, on[7], row_indices.to(device))
        kernels.apply_logit_bias(x, on[0], on[1], on[6])
        return x.cpu()

    assert torch.equal(run("cuda"), run("cpu"))


def test_sampling_cpu_and_cuda_agree() -> None:
    rows, vocab = 2000, 4096
    logits = ref.make_logits(rows, vocab, seed=34, scale=3.0)
    g = torch.Generator().manual_seed(35)
    params = {
        "temperature": 0.3 + torch.rand(rows, generator=g),
        "top_k": torch.randint(0, 200, (rows,), generator=g, dtype=torch.int32),
        "top_p": 0.3 + 0.7 * torch.rand(rows, generator=g),
        "min_p": torch.rand(rows, generator=g) / 20,
        "seeds": torch.randint(0, 2**62, (rows,), generator=g),
        "offsets": torch.randint(0, 1000, (rows,), generator=g),
    }
    cpu = kernels.sample(logits, **params)
    gpu = kernels.sample(logits.cuda(), **{k: v.cuda() for k, v in params.items()}).cpu()
    # Same u and (up to fp32 rounding) the same CDF: differences only at rounding boundaries.
    assert float((cpu == gpu).double().mean()) > 0.99


@pytest.mark.parametrize("case", sorted(ref.SAMPLING_CASES))
def test_sampling_cpu_and_cuda_same_distribution(case: str) -> None:
    t, k, p, mp = ref.SAMPLING_CASES[case]
    row = ref.make_logits(1, 150, seed=36)[0]
    # Different seeds on the two devices: independent samples of the same distribution.
    cpu = ref.draw_many(row, ref.NUM_DRAWS, "cpu", t, k, p, mp, seed=1)
    gpu = ref.draw_many(row, ref.NUM_DRAWS, "cuda", t, k, p, mp, seed=2)
    table = np.stack(
        [torch.bincount(cpu.long(), minlength=150), torch.bincount(gpu.long(), minlength=150)]
    )
    table = table[:, table.sum(axis=0) >= 10]
    if table.shape[1] >= 2:
        assert stats.chi2_contingency(table).pvalue > ref.P_VALUE_MIN


def test_runs_on_the_current_stream() -> None:
    logits = ref.make_logits(16, 10000, seed=37).cuda()
    params = {k: v.cuda() for k, v in ref.sample_params(16, "cpu", 1.0, 20, 0.9, 0.0).items()}
    want = kernels.sample(logits, **params)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = kernels.sample(logits, **params)
    stream.synchronize()
    assert torch.equal(got, want)
