"""The sampler's per-step arrays reach the device in one copy (``PinnedStaging.upload_arrays``).

On the CPU the packing itself is checked (every array comes back with its dtype, length and
values, 8-byte arrays aligned); on a GPU (``gpu``-marked) the packed upload is used by
``BatchSampler``, whose greedy tokens with penalties and a token ban must equal the CPU's.
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
