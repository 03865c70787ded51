"""The sampler's per-step arrays reach the device in one copy (``PinnedStaging.upload_arrays``).

On the CPU the packing itself is checked (every array comes back with its dtype, length and
values, 8-byte arrays aligned); on a GPU (``gpu``-marked) the packed upload is used by
``BatchSampler``, whose greedy tokens with penalties and a token ban must equal the CPU's.
The logprobs that rows ask for are computed on the device with the step and reach the host with
the ids (``SampleOutput.next_ids``): checked against a per-row reference on the CPU, and equal
between CUDA and the CPU on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sglang.srt.model_executor.forward_batch import PinnedStaging


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "temperature": rng.random(5, dtype=np.float32),
        "top_k": np.array([1, 2, 3, 4, 1 << 30], dtype=np.int32),
        "odd": np.array([7, 8, 9], dtype=np.int32),  # an odd length before the 8-byte arrays
        "seeds": np.array([2**63 + 5, 1, 2, 3, 4], dtype=np.uint64).view(np.int64),
        "offsets": np.array([0, 1, 2, 3, 4], dtype=np.int64),
        "empty": np.zeros(0, dtype=np.int32),
        "wide": np.array([1.5, -2.25], dtype=np.float64),
    }


def _check(arrays: dict[str, np.ndarray], got: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(arrays)
    for key, expected in arrays.items():
        tensor = got[key].cpu()
        assert tensor.dtype == torch.from_numpy(expected).dtype, key
        assert tensor.is_contiguous() and tensor.numpy().tolist() == expected.tolist(), key
        if expected.dtype.itemsize == 8:
            assert got[key].data_ptr() % 8 == 0, key


def test_arrays_come_back_with_their_dtypes() -> None:
    arrays = _arrays()
    _check(arrays, PinnedStaging().upload_arrays(arrays, torch.device("cpu")))


def test_one_byte_dtypes_are_refused() -> None:
    with pytest.raises(TypeError, match="4- or 8-byte"):
        PinnedStaging().upload_arrays({"mask": np.zeros(3, dtype=np.uint8)},
                                      torch.device("cpu"))


@pytest.mark.gpu
def test_cuda_upload_and_sampler_equal_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from sglang.srt.sampling.sampler import BatchSampler, RowSampling
    from sglang.srt.sampling.sampling_params import SamplingParams

    cuda = torch.device("cuda")
    staging = PinnedStaging()
    for _ in range(3):  # the buffer is reused after the previous copy
        arrays = _arrays()
        _check(arrays, staging.upload_arrays(arrays, cuda))
    rows = []
    for k in range(4):
        params = SamplingParams(temperature=0, frequency_penalty=0.5 * k,
                                repetition_penalty=1.0 + 0.2 * k)
        params.normalize()
        rows.append(RowSampling.build(params, seed=k, return_logprob=False, top_logprobs_num=0,
                                      token_ids_logprob=None))
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    offsets = np.zeros(4, dtype=np.int64)
    penalty = (np.array([0, 2, 2, 3, 5], dtype=np.int32), np.array([3, 9, 1, 4, 5], np.int32),
               np.array([1, 2, 3, 1, 1], dtype=np.int32))
    ban = (np.array([0, 1, 1, 1, 2], dtype=np.int32), np.array([7, 8], dtype=np.int32))
    out = {}
    for device in ("cpu", "cuda"):
        sampler = BatchSampler(torch.device(device))
        out[device] = sampler.sample(logits.clone().to(device), rows, offsets, penalty,
                                     ban).next_ids.tolist()
    assert out["cuda"] == out["cpu"]


def _logprob_rows() -> list:
    from sglang.srt.sampling.sampler import RowSampling
    from sglang.srt.sampling.sampling_params import SamplingParams

    asks = [(False, 0, None), (True, 0, None), (True, 3, [5, 1]), (True, 1, None),
            (True, 0, [2, 63, 7])]
    rows = []
    for k, (want, top, ids) in enumerate(asks):
        params = SamplingParams(temperature=0.5 + 0.25 * k, top_k=1)  # top_k 1: greedy ids
        params.normalize()
        rows.append(RowSampling.build(params, seed=k, return_logprob=want, top_logprobs_num=top,
                                      token_ids_logprob=ids))
    return rows


def _sample_with_logprobs(device: str, rows: list, logits: torch.Tensor) -> object:
    from sglang.srt.sampling.sampler import BatchSampler

    sampler = BatchSampler(torch.device(device))
    out = sampler.sample(logits.clone().to(device), rows, np.zeros(len(rows), np.int64), None,
                         None)
    assert all(x is None for x in out.token_logprobs)  # filled when the ids reach the host
    assert len(out.next_ids) == len(rows)  # (waits for the copy, fills the lists)
    return out


def test_sampler_logprobs_per_row() -> None:
    rows = _logprob_rows()
    logits = torch.randn(len(rows), 64, generator=torch.Generator().manual_seed(2))
    out = _sample_with_logprobs("cpu", rows, logits)
    ids = out.next_ids.tolist()
    assert ids == logits.argmax(dim=-1).tolist()
    for i, r in enumerate(rows):
        ref = torch.log_softmax(logits[i] / r.params.temperature, dim=-1)
        if not r.return_logprob:
            assert out.token_logprobs[i] is None and out.top_logprobs[i] is None
            continue
        assert out.token_logprobs[i] == pytest.approx(float(ref[ids[i]]), abs=1e-6)
        if r.top_logprobs_num:
            vals, top = torch.topk(ref, r.top_logprobs_num)
            assert [t for _, t in out.top_logprobs[i]] == top.tolist()
            assert [v for v, _ in out.top_logprobs[i]] == pytest.approx(vals.tolist(), abs=1e-6)
        else:
            assert out.top_logprobs[i] is None
        if r.token_ids_logprob:
            assert [t for _, t in out.ids_logprobs[i]] == r.token_ids_logprob
            assert [v for v, _ in out.ids_logprobs[i]] == pytest.approx(
                [float(ref[t]) for t in r.token_ids_logprob], abs=1e-6)
        else:
            assert out.ids_logprobs[i] is None


@pytest.mark.gpu
def test_cuda_logprobs_equal_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rows = _logprob_rows()
    logits = torch.randn(len(rows), 64, generator=torch.Generator().manual_seed(2))
    cpu = _sample_with_logprobs("cpu", rows, logits)
    cuda = _sample_with_logprobs("cuda", rows, logits)
    assert cuda.next_ids.tolist() == cpu.next_ids.tolist()
    for field in ("token_logprobs", "top_logprobs", "ids_logprobs"):
        for a, b in zip(getattr(cpu, field), getattr(cuda, field), strict=True):
            assert (a is None) == (b is None)
            if isinstance(a, list):
                assert [t for _, t in a] == [t for _, t in b]
                assert [v for v, _ in a] == pytest.approx([v for v, _ in b], abs=1e-5)
            elif a is not None:
                assert a == pytest.approx(b, abs=1e-5)

