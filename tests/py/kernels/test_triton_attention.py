"""The triton attention backend against torch_native (the SDPA reference) on random slot tables:
decode and extend (with and without a cached prefix), GQA, page sizes 1 and 16, float32 and
bfloat16, and the fused RoPE + KV-store entry. On a GPU the kernels run compiled; without one
they run under Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py), small shapes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.rotary_embedding import RotaryEmbedding
from sglang.srt.layers.triton_ops import available
from sglang.srt.mem_cache.kv_pool import KVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode

pytestmark = pytest.mark.skipif(not available(), reason="needs the triton package")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
GQA = [(4, 1), (4, 4), (6, 2)]  # (heads, kv_heads)


def _triton_backend():  # imported late: the kernels load only where triton is present
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    return TritonAttnBackend()


@dataclass
class Case:
    batch: ForwardBatch
    pool: KVPool
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layer: RadixAttention


def make_case(
    seed: int,
    page_size: int,
    heads: int,
    kv_heads: int,
    dim: int,
    dtype: torch.dtype,
    prefix_lens: list[int],
    extend_lens: list[int],
) -> Case:
    """Requests at shuffled table rows, their pages at shuffled pool pages (page 0 is padding),
    table entries past each length and unused rows filled with other valid slots, the cached
    prefixes' K/V random in the pool, new q/k/v random."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    bs = len(seq_lens)
    width = max(seq_lens) + page_size + 3
    pages_needed = sum(-(-s // page_size) for s in seq_lens)
    num_pages = pages_needed + 4
    num_slots = num_pages * page_size
    free_pages = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()
    rows = torch.randperm(bs + 2, generator=gen).tolist()[:bs]
    table = torch.randint(0, num_slots, (bs + 2, width), generator=gen, dtype=torch.int32)
    for i, s in enumerate(seq_lens):
        for j in range(-(-s // page_size)):
            page = free_pages.pop()
            n = min(page_size, s - j * page_size)
            cols = torch.arange(n, dtype=torch.int32)
            table[rows[i], j * page_size : j * page_size + n] = page * page_size + cols
    pool = KVPool(num_slots, 1, kv_heads, dim, dtype, DEVICE)
    pool.k[0].copy_(torch.randn(pool.k[0].shape, generator=gen))
    pool.v[0].copy_(torch.randn(pool.v[0].shape, generator=gen))
    positions, out_slots, starts = [], [], [0]
    for i in range(bs):
        pos = list(range(prefix_lens[i], seq_lens[i]))
        positions += pos
        out_slots += table[rows[i], pos].tolist()
        starts.append(starts[-1] + extend_lens[i])
    tokens = starts[-1]
    decode = all(e == 1 for e in extend_lens) and all(p > 0 for p in prefix_lens)

    def i32(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.int32, device=DEVICE)

    def i64(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.int64, device=DEVICE)

    batch = ForwardBatch(
        mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
        batch_size=bs,
        num_tokens=tokens,
        input_ids=i64([0] * tokens),
        positions=i64(positions),
        out_slots=i64(out_slots),
        req_pool_indices=i64(rows),
        seq_lens=i32(seq_lens),
        prefix_lens=i32(prefix_lens),
        extend_lens=i32(extend_lens),
        extend_start=i32(starts),
        logits_rows=i64(list(range(bs))),
        req_to_token=table.to(DEVICE),
        req_pool_indices_cpu=rows,
        seq_lens_cpu=seq_lens,
        prefix_lens_cpu=prefix_lens,
        extend_start_cpu=starts,
        kv_pool=pool,
    )

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(dtype=dtype, device=DEVICE)

    q, k, v = rand(tokens, heads, dim), rand(tokens, kv_heads, dim), rand(tokens, kv_heads, dim)
    return Case(batch, pool, q, k, v, RadixAttention(0, heads, kv_heads, dim, dim**-0.5))


def run_both(case: Case, backend) -> tuple[torch.Tensor, torch.Tensor]:
    """(triton output, torch_native output), each on its own copy of the pool."""
    outs = []
    for impl in (backend, TorchNativeAttnBackend()):
        pool = KVPool(case.pool.num_slots, 1, case.pool.num_kv_heads, case.pool.head_dim,
                      case.pool.dtype, DEVICE)  # fmt: skip
        pool.k[0].copy_(case.pool.k[0])
        pool.v[0].copy_(case.pool.v[0])
        case.batch.kv_pool, case.batch.attn_metadata = pool, None
        impl.init_forward_metadata(case.batch)
        outs.append(impl.forward(case.q.clone(), case.k, case.v, case.layer, case.batch))
    return outs[0], outs[1]


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_matches_torch_native(page_size, heads, kv_heads, dtype) -> None:
    case = make_case(1, page_size, heads, kv_heads, 64, dtype, [1, 8, 40], [1, 1, 1])
    assert case.batch.is_decode
    ours, ref = run_both(case, _triton_backend())
    close(ours, ref, dtype)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extend_matches_torch_native(page_size, heads, kv_heads, dtype) -> None:
    # a fresh prompt, a prefix-cache hit with a long extend, one new token after a prefix
    case = make_case(2, page_size, heads, kv_heads, 64, dtype, [0, 19, 33], [21, 18, 1])
    assert not case.batch.is_decode
    ours, ref = run_both(case, _triton_backend())
    close(ours, ref, dtype)


def test_head_dim_not_a_power_of_two() -> None:
    case = make_case(3, 1, 4, 2, 48, torch.float32, [0, 6], [9, 5])
    close(*run_both(case, _triton_backend()), torch.float32)
    case = make_case(4, 1, 4, 2, 48, torch.float32, [6, 30], [1, 1])
    close(*run_both(case, _triton_backend()), torch.float32)


@pytest.mark.parametrize("splits", [1, 2, 16])
def test_decode_split_counts(splits: int) -> None:
    """Any power-of-two split count gives the same answer, including more parts than keys
    (the empty parts are skipped by the merge)."""
    from sglang.srt.layers.triton_ops.attention import decode_attention

    case = make_case(5, 16, 4, 2, 64, torch.float32, [2, 11, 70], [1, 1, 1])
    ref = run_both(case, _triton_backend())[1].view(3, 4, 64)
    b = case.batch
    pool = b.kv_pool  # the reference's pool: the new tokens' K/V are stored

    out = decode_attention(case.q, pool.k[0], pool.v[0], b.req_to_token, b.req_pool_indices,
                           b.seq_lens, case.layer.scaling, splits)  # fmt: skip
    close(out, ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_rope_matches_rotate_then_store(dtype: torch.dtype) -> None:
    """The fused RoPE + KV store on strided views of a qkv buffer equals RotaryEmbedding.apply
    followed by the plain store, in the pool and in the attention output."""
    from sglang.srt.configs.model_config import RopeConfig

    heads, kv_heads, dim = 4, 2, 64
    case = make_case(6, 16, heads, kv_heads, dim, dtype, [0, 12], [10, 6])
    rope = RotaryEmbedding(dim, 128, RopeConfig(theta=10000.0), dtype=dtype, device=DEVICE)
    t = case.batch.num_tokens
    qkv = torch.cat([case.q.view(t, -1), case.k.view(t, -1), case.v.view(t, -1)], 1)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], 1)
    q, k, v = q.view(t, heads, dim), k.view(t, kv_heads, dim), v.view(t, kv_heads, dim)
    triton_be = _triton_backend()
    pools = []
    for fused in (True, False):
        pool = KVPool(case.pool.num_slots, 1, kv_heads, dim, dtype, DEVICE)
        case.batch.kv_pool, case.batch.attn_metadata = pool, None
        triton_be.init_forward_metadata(case.batch)
        if fused:
            qq = q.clone()
            out = triton_be.forward_rope(qq, k, v, rope.cos_cache, rope.sin_cache, case.layer,
                                         case.batch)  # fmt: skip
        else:
            qk = RotaryEmbedding.apply(torch.cat([q, k], 1), rope.lookup(case.batch.positions))
            qr, kr = qk.split([heads, kv_heads], 1)
            out = triton_be.forward(qr, kr, v, case.layer, case.batch)
        pools.append(pool)
        if fused:
            fused_out, fused_q = out, qq
        else:
            plain_out, plain_q = out, qr
    close(fused_q, plain_q, dtype)
    close(pools[0].k[0], pools[1].k[0], dtype)
    assert torch.equal(pools[0].v[0], pools[1].v[0])
    close(fused_out, plain_out, dtype)
