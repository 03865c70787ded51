"""Pure-torch reference of the sampling kernels' semantics, and checks shared by the CPU and CUDA
test modules (``test_sampling_cpu.py``, ``test_sampling_cuda.py``).

The reference follows ``csrc/include/sglang/kernels/sampling.h``: in-place processors compute in
fp32 and round once to the logits dtype; sampling keeps {p >= pivot} (top-k with ties, top-p by
the mass of strictly more likely tokens, min-p against the max) in float64, always keeps the most
likely token and renormalises. Each ``check_*`` function runs one property on a device.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from sglang.srt.sampling import kernels

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NUM_DRAWS = 20000
P_VALUE_MIN = 1e-3


# ---- references -----------------------------------------------------------------------------------


def ref_penalties(
    logits: torch.Tensor,
    indptr: torch.Tensor,
    token_ids: torch.Tensor,
    counts: torch.Tensor,
    frequency: torch.Tensor | None,
    presence: torch.Tensor | None,
    repetition: torch.Tensor | None,
) -> torch.Tensor:
    out = logits.float().clone()
    for r in range(out.shape[0]):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        ids = token_ids[lo:hi].long()
        c = counts[lo:hi]
        v = out[r, ids]
        f = frequency[r] if frequency is not None else torch.tensor(0.0)
        p = presence[r] if presence is not None else torch.tensor(0.0)
        v = torch.where(c > 0, v - (f * c.float() + p), v)
        if repetition is not None and float(repetition[r]) != 1.0:
            v = torch.where(v > 0, v / repetition[r], v * repetition[r])
        out[r, ids] = v
    return out.to(logits.dtype)


def ref_token_list(
    logits: torch.Tensor, indptr: torch.Tensor, token_ids: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    out = logits.float().clone()
    for r in range(out.shape[0]):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        ids = token_ids[lo:hi].long()
        out[r, ids] = -torch.inf if bias is None else out[r, ids] + bias[lo:hi]
    return out.to(logits.dtype)


def ref_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, row_indices: torch.Tensor | None
) -> torch.Tensor:
    out = logits.clone()
    vocab = out.shape[1]
    covered = min(vocab, bitmask.shape[1] * 32)
    t = torch.arange(covered)
    for r in range(out.shape[0]):
        mask_row = r if row_indices is None else int(row_indices[r])
        if mask_row < 0:
            continue
        allowed = (bitmask[mask_row, t // 32] >> (t % 32)) & 1
        out[r, :covered] = torch.where(allowed.bool(), out[r, :covered], -torch.inf)
    return out


def ref_kept(
    row: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    slack: float = 0.0,
) -> torch.Tensor:
    """Bool mask of the tokens `sample` may draw for one row; slack > 0 widens every threshold
    (for support checks that must tolerate fp32 rounding at the boundaries)."""
    x = row.double()
    vocab = x.numel()
    if temperature <= 0 or top_k == 1:
        return torch.arange(vocab) == int(torch.argmax(x))
    e = torch.exp((x - x.max()) / temperature)
    total = e.sum()
    desc = torch.sort(e, descending=True).values
    kept = torch.ones(vocab, dtype=torch.bool)
    if 1 < top_k < vocab:
        kept &= e >= desc[top_k - 1] * (1 - slack)
    if top_p < 1:
        # Mass of strictly larger weights: the cumulative sum before the first equal weight.
        asc = desc.flip(0)
        count_gt = vocab - torch.searchsorted(asc, e * (1 + slack), right=True)
        csum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(desc, 0)])
        kept &= csum[count_gt] < max(top_p, 0.0) * total * (1 + slack) + slack
    if min_p > 0:
        kept &= e >= min(min_p, 1.0) * (1 - slack)
    kept[int(torch.argmax(x))] = True
    return kept


def ref_probs(
    row: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float
) -> torch.Tensor:
    """Kept and renormalised probabilities (float64) of one row."""
    kept = ref_kept(row, temperature, top_k, top_p, min_p)
    if temperature <= 0 or top_k == 1:
        return kept.double()
    x = row.double()
    e = torch.where(kept, torch.exp((x - x.max()) / temperature), 0.0)
    return e / e.sum()


def chi_square_p(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness-of-fit p-value of integer samples against probs; bins with expected count < 5 are
    merged into one (and that bin is dropped when it is still below 5)."""
    n = samples.numel()
    observed = torch.bincount(samples.long().cpu(), minlength=probs.numel()).double().numpy()
    expected = probs.numpy() * n
    assert observed[expected == 0].sum() == 0, "drew a token outside the kept set"
    big = expected >= 5
    obs = list(observed[big])
    exp = list(expected[big])
    small = (~big) & (expected > 0)
    if expected[small].sum() >= 5:
        obs.append(observed[small].sum())
        exp.append(expected[small].sum())
    obs_a, exp_a = np.array(obs), np.array(exp)
    exp_a *= obs_a.sum() / exp_a.sum()
    if len(obs_a) < 2:
        return 1.0
    return float(stats.chisquare(obs_a, exp_a).pvalue)


# ---- helpers ----------------------------------------------------------------------------------------


def make_logits(rows: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


def sample_params(
    rows: int, device: str, t: float, k: int, p: float, mp: float, seed: int = 0
) -> dict[str, torch.Tensor]:
    return {
        "temperature": torch.full((rows,), t, dtype=torch.float32, device=device),
        "top_k": torch.full((rows,), k, dtype=torch.int32, device=device),
        "top_p": torch.full((rows,), p, dtype=torch.float32, device=device),
        "min_p": torch.full((rows,), mp, dtype=torch.float32, device=device),
        "seeds": torch.full((rows,), seed, dtype=torch.int64, device=device),
        "offsets": torch.arange(rows, dtype=torch.int64, device=device),
    }


def draw_many(
    row: torch.Tensor, num: int, device: str, t: float, k: int, p: float, mp: float, seed: int
) -> torch.Tensor:
    """`num` draws from one logits row (expanded with row stride 0), offsets 0..num-1."""
    logits = row.to(device).reshape(1, -1).expand(num, -1)
    return kernels.sample(logits, **sample_params(num, device, t, k, p, mp, seed)).cpu()


def random_csr(
    rows: int, vocab: int, seed: int, max_len: int = 12
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (rows,), generator=g)
    indptr = torch.zeros(rows + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(lengths, 0)
    ids = [torch.randperm(vocab, generator=g)[: int(n)] for n in lengths]
    token_ids = torch.cat(ids).to(torch.int32) if ids else torch.zeros(0, dtype=torch.int32)
    counts = torch.randint(0, 4, (token_ids.numel(),), generator=g, dtype=torch.int32)
    return indptr, token_ids, counts


# ---- checks (device = "cpu" or "cuda") -----------------------------------------------------------

SAMPLING_CASES = {
    "temperature": (0.7, 0, 1.0, 0.0),
    "top_k": (1.0, 10, 1.0, 0.0),
    "top_p": (1.0, 0, 0.8, 0.0),
    "min_p": (1.0, 0, 1.0, 0.05),
    "combined": (0.9, 20, 0.9, 0.02),
}


def check_greedy(device: str, dtype: torch.dtype) -> None:
    logits = make_logits(64, 1000, seed=1).to(dtype)
    logits[3, 10] = logits[3, 500] = 50.0  # a tie: the lower id wins
    logits[4] = 1.0  # all equal: token 0
    logits[5, :] = -torch.inf  # nothing above -inf: token 0
    want = torch.argmax(logits.float(), dim=1).to(torch.int32)
    want[5] = 0
    for t, k in ((0.0, 0), (-1.0, 50), (0.8, 1)):
        got = kernels.sample(logits.to(device), **sample_params(64, device, t, k, 1.0, 0.0))
        assert torch.equal(got.cpu(), want), (t, k)


def check_penalties(device: str, dtype: torch.dtype) -> None:
    rows, vocab = 16, 300
    logits = make_logits(rows, vocab, seed=2).to(dtype)
    indptr, token_ids, counts = random_csr(rows, vocab, seed=3)
    g = torch.Generator().manual_seed(4)
    freq = torch.rand(rows, generator=g)
    pres = torch.rand(rows, generator=g) - 0.5
    rep = 1.0 + torch.rand(rows, generator=g)
    rep[0] = 1.0
    for f, p, r in ((freq, pres, rep), (None, None, rep), (freq, None, None), (None, None, None)):
        want = ref_penalties(logits, indptr, token_ids, counts, f, p, r)
        got = logits.to(device)
        dev = [None if t is None else t.to(device) for t in (f, p, r)]
        kernels.apply_penalties(
            got, indptr.to(device), token_ids.to(device), counts.to(device), *dev
        )
        assert torch.equal(got.cpu(), want)


def check_ban_and_bias(device: str, dtype: torch.dtype) -> None:
    rows, vocab = 16, 300
    logits = make_logits(rows, vocab, seed=5).to(dtype)
    indptr, token_ids, _ = random_csr(rows, vocab, seed=6)
    bias = torch.randn(token_ids.numel(), generator=torch.Generator().manual_seed(7)) * 3
    got = logits.to(device)
    kernels.apply_token_ban(got, indptr.to(device), token_ids.to(device))
    assert torch.equal(got.cpu(), ref_token_list(logits, indptr, token_ids, None))
    got = logits.to(device)
    kernels.apply_logit_bias(got, indptr.to(device), token_ids.to(device), bias.to(device))
    assert torch.equal(got.cpu(), ref_token_list(logits, indptr, token_ids, bias))


def check_empty_lists_change_nothing(device: str) -> None:
    """Per-row lists with no entries at all (a request's first penalty step: nothing generated
    yet). An empty CUDA tensor has a null data pointer; the adapter must not pass it on."""
    rows, vocab = 4, 300
    logits = make_logits(rows, vocab, seed=8).to(device)
    before = logits.clone()
    indptr = torch.zeros(rows + 1, dtype=torch.int32, device=device)
    empty = torch.empty(0, dtype=torch.int32, device=device)
    ones = torch.ones(rows, device=device)
    kernels.apply_penalties(logits, indptr, empty, empty, ones, ones, ones * 2)
    kernels.apply_token_ban(logits, indptr, empty)
    kernels.apply_logit_bias(logits, indptr, empty, torch.empty(0, device=device))
    assert torch.equal(logits, before)


def check_bitmask(device: str, dtype: torch.dtype) -> None:
    rows, vocab = 6, 1000
    words = (vocab + 31) // 32
    logits = make_logits(rows, vocab, seed=8).to(dtype)
    g = torch.Generator().manual_seed(9)
    bitmask = torch.randint(-(2**31), 2**31, (4, words), generator=g, dtype=torch.int64)
    bitmask = bitmask.to(torch.int32)
    bitmask[2] = -1  # all allowed
    row_indices = torch.tensor([3, -1, 0, 2, 1, 3], dtype=torch.int32)
    got = logits.to(device)
    kernels.apply_token_bitmask(got, bitmask.to(device), row_indices.to(device))
    assert torch.equal(got.cpu(), ref_bitmask(logits, bitmask, row_indices))
    got = logits[:4].to(device)
    kernels.apply_token_bitmask(got, bitmask.to(device))
    assert torch.equal(got.cpu(), ref_bitmask(logits[:4], bitmask, None))
    # A mask shorter than the vocab leaves the tail alone.
    got = logits[:4].to(device)
    kernels.apply_token_bitmask(got, bitmask[:, :5].contiguous().to(device))
    assert torch.equal(got.cpu(), ref_bitmask(logits[:4], bitmask[:, :5], None))


def check_distribution(device: str, case: str) -> None:
    t, k, p, mp = SAMPLING_CASES[case]
    row = make_logits(1, 150, seed=10)[0]
    draws = draw_many(row, NUM_DRAWS, device, t, k, p, mp, seed=123)
    probs = ref_probs(row, t, k, p, mp)
    pvalue = chi_square_p(draws, probs)
    assert pvalue > P_VALUE_MIN, (case, pvalue)


def check_large_vocab_support(device: str, case: str) -> None:
    t, k, p, mp = SAMPLING_CASES[case]
    row = make_logits(1, 49152, seed=11, scale=3.0)[0]
    draws = draw_many(row, 1500, device, t, k, p, mp, seed=77)
    loose = ref_kept(row, t, k, p, mp, slack=1e-4)
    assert bool(loose[draws.long()].all()), case
    strict = ref_kept(row, t, k, p, mp)
    assert torch.unique(draws).numel() >= min(20, int(strict.sum()))


def check_sixteen_bit_sampling_matches_fp32(device: str, dtype: torch.dtype) -> None:
    logits = make_logits(128, 2000, seed=12).to(dtype)
    params = sample_params(128, device, 0.9, 40, 0.9, 0.01, seed=5)
    got = kernels.sample(logits.to(device), **params)
    want = kernels.sample(logits.float().to(device), **params)
    assert torch.equal(got, want)


def check_batch_independence(device: str) -> None:
    logits = make_logits(32, 5000, seed=13)
    params = sample_params(32, device, 1.0, 0, 0.95, 0.0)
    params["seeds"] = torch.arange(100, 132, dtype=torch.int64, device=device)
    params["offsets"] = torch.arange(7, 39, dtype=torch.int64, device=device)
    batch = kernels.sample(logits.to(device), **params).cpu()
    for r in (0, 9, 31):
        one = {name: v[r : r + 1] for name, v in params.items()}
        alone = kernels.sample(logits[r : r + 1].to(device), **one).cpu()
        assert int(alone[0]) == int(batch[r])
    again = kernels.sample(logits.to(device), **params).cpu()
    assert torch.equal(again, batch)
    params["offsets"] = params["offsets"] + 1000
    moved = kernels.sample(logits.to(device), **params).cpu()
    assert int((moved == batch).sum()) < 16


def check_inside_kept_set(device: str) -> None:
    rows, vocab = 64, 3000
    logits = make_logits(rows, vocab, seed=14)
    g = torch.Generator().manual_seed(15)
    t = 0.5 + torch.rand(rows, generator=g)
    k = torch.randint(0, 100, (rows,), generator=g, dtype=torch.int32)
    p = 0.5 + torch.rand(rows, generator=g) / 2
    mp = torch.rand(rows, generator=g) / 10
    params = {"temperature": t, "top_k": k, "top_p": p, "min_p": mp}
    params["seeds"] = torch.arange(rows, dtype=torch.int64)
    for trial in range(5):
        params["offsets"] = torch.full((rows,), trial, dtype=torch.int64)
        on_device = {name: v.to(device) for name, v in params.items()}
        got = kernels.sample(logits.to(device), **on_device).cpu()
        for r in range(rows):
            kept = ref_kept(logits[r], float(t[r]), int(k[r]), float(p[r]), float(mp[r]), 1e-4)
            assert bool(kept[int(got[r])]), (r, trial)
