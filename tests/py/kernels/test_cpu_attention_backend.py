"""CpuAttnBackend (fused C++ kernels) against TorchNativeAttnBackend on hand-built ForwardBatches:
decode (random slot tables, GQA, lengths 1..2048, mixed in one batch) and extend (no prefix,
cached prefix, several requests), through ``forward`` (pre-rotated q/k) and ``forward_rope``
(q/k/v straight from a fused qkv projection), fp32 and bf16, on both vector paths."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sglang import _core
from sglang.srt.configs.model_config import RopeConfig
from sglang.srt.layers.attention.cpu_backend import CpuAttnBackend
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.rotary_embedding import RotaryEmbedding
from sglang.srt.mem_cache.kv_pool import KVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode

H, KVH, D = 9, 3, 64
SLOTS = 8192
TABLE_ROWS, TABLE_COLS = 24, 2560
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(params=["avx2", "avx512"])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "avx512" and _core.best_cpu_isa() != "avx512":
        pytest.skip("this CPU has no AVX-512")
    _core.set_cpu_isa(request.param)
    yield request.param
    _core.set_cpu_isa("auto")


def make_batch(prefix: list[int], extend: list[int], decode: bool, seed: int) -> ForwardBatch:
    """A ForwardBatch over random table rows and distinct random slots (slot 0 left as padding)."""
    g = torch.Generator().manual_seed(seed)
    n = len(prefix)
    rows = torch.randperm(TABLE_ROWS, generator=g)[:n].tolist()
    seq = [p + e for p, e in zip(prefix, extend)]
    table = torch.randint(0, SLOTS, (TABLE_ROWS, TABLE_COLS), generator=g, dtype=torch.int32)
    free = (torch.randperm(SLOTS - 1, generator=g) + 1).int()
    used = 0
    for row, s in zip(rows, seq):
        table[row, :s] = free[used : used + s]
        used += s
    starts = [0]
    for e in extend:
        starts.append(starts[-1] + e)
    out_slots = torch.cat([table[r, p:s] for r, p, s in zip(rows, prefix, seq)]).long()
    positions = torch.cat([torch.arange(p, s) for p, s in zip(prefix, seq)])
    i32 = torch.int32
    return ForwardBatch(
        mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
        batch_size=n,
        num_tokens=starts[-1],
        input_ids=torch.zeros(starts[-1], dtype=torch.int64),
        positions=positions,
        out_slots=out_slots,
        req_pool_indices=torch.tensor(rows),
        seq_lens=torch.tensor(seq, dtype=i32),
        prefix_lens=torch.tensor(prefix, dtype=i32),
        extend_lens=torch.tensor(extend, dtype=i32),
        extend_start=torch.tensor(starts, dtype=i32),
        logits_rows=torch.arange(n),
        req_to_token=table,
        req_pool_indices_cpu=rows,
        seq_lens_cpu=seq,
        prefix_lens_cpu=prefix,
        extend_start_cpu=starts,
    )


def _pool(dtype: torch.dtype, seed: int) -> KVPool:
    """A one-layer pool filled with random K/V (the cached prefixes)."""
    pool = KVPool(SLOTS, 1, KVH, D, dtype, "cpu")
    g = torch.Generator().manual_seed(seed)
    pool.k[0].copy_(torch.randn(SLOTS, KVH, D, generator=g))
    pool.v[0].copy_(torch.randn(SLOTS, KVH, D, generator=g))
    return pool


def _run(
    backend: CpuAttnBackend | TorchNativeAttnBackend,
    batch: ForwardBatch,
    pool: KVPool,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    batch.kv_pool = pool
    batch.attn_backend = backend  # type: ignore[assignment]
    batch.attn_metadata = None
    backend.init_forward_metadata(batch)
    layer = RadixAttention(0, H, KVH, D, D**-0.5)
    return backend.forward(q, k, v, layer, batch)


def _compare(batch: ForwardBatch, dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    t = batch.num_tokens
    qk = torch.randn(t, H + KVH, D, generator=g).to(dtype)
    q, k = qk.split([H, KVH], dim=1)  # strided views, as the model passes them
    v = torch.randn(t, KVH, D, generator=g).to(dtype)
    ref_pool, pool = _pool(dtype, seed + 1), _pool(dtype, seed + 1)
    ref = _run(TorchNativeAttnBackend(), batch, ref_pool, q, k, v)
    got = _run(CpuAttnBackend(), batch, pool, q, k, v)
    assert got.shape == (t, H * D) and got.dtype == dtype
    assert torch.equal(pool.k[0], ref_pool.k[0]) and torch.equal(pool.v[0], ref_pool.v[0])
    err = (got.float() - ref.float()).abs().max().item()
    assert err < TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "lens",
    [[1], [2048], [17, 300], [1, 5, 64, 129, 1000, 2048, 33, 7, 512, 2, 250, 1500, 3, 90, 700, 48]],
)
def test_decode_matches_torch_native(isa: str, dtype: torch.dtype, lens: list[int]) -> None:
    batch = make_batch([n - 1 for n in lens], [1] * len(lens), decode=True, seed=len(lens))
    _compare(batch, dtype, seed=sum(lens))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "prefix, extend",
    [([0], [1]), ([0], [150]), ([300], [64]), ([0, 128, 5, 900], [40, 70, 1, 3]), ([0, 0], [9, 2])],
)
def test_extend_matches_torch_native(
    isa: str, dtype: torch.dtype, prefix: list[int], extend: list[int]
) -> None:
    batch = make_batch(prefix, extend, decode=False, seed=sum(prefix) + 1)
    _compare(batch, dtype, seed=sum(extend))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("decode", [True, False])
def test_forward_rope_matches_rotate_then_forward(
    isa: str, dtype: torch.dtype, decode: bool
) -> None:
    if decode:
        batch = make_batch([40, 0, 999], [1, 1, 1], decode=True, seed=3)
    else:
        batch = make_batch([0, 200], [33, 20], decode=False, seed=4)
    rope = RotaryEmbedding(D, 4096, RopeConfig(), dtype=dtype)
    t = batch.num_tokens
    qkv = torch.randn(t, (H + 2 * KVH) * D, generator=torch.Generator().manual_seed(5)).to(dtype)
    q = qkv[:, : H * D].view(t, H, D)
    k = qkv[:, H * D : (H + KVH) * D].view(t, KVH, D)
    v = qkv[:, (H + KVH) * D :].view(t, KVH, D)
    cos_sin = rope.lookup(batch.positions)
    ref_pool, pool = _pool(dtype, 6), _pool(dtype, 6)
    ref = _run(
        TorchNativeAttnBackend(),
        batch,
        ref_pool,
        RotaryEmbedding.apply(q, cos_sin),
        RotaryEmbedding.apply(k, cos_sin),
        v,
    )
    backend = CpuAttnBackend()
    assert backend.fuses_rope
    batch.kv_pool, batch.attn_metadata = pool, None
    backend.init_forward_metadata(batch)
    layer = RadixAttention(0, H, KVH, D, D**-0.5)
    got = backend.forward_rope(q, k, v, rope.cos_cache, rope.sin_cache, layer, batch)
    atol = 1e-6 if dtype == torch.float32 else 0.0
    torch.testing.assert_close(pool.k[0], ref_pool.k[0], atol=atol, rtol=0)
    assert torch.equal(pool.v[0], ref_pool.v[0])
    assert (got.float() - ref.float()).abs().max().item() < TOL[dtype]


def test_metadata_is_shared_and_checked() -> None:
    batch = make_batch([3, 4], [1, 1], decode=True, seed=9)
    backend = CpuAttnBackend()
    backend.init_forward_metadata(batch)
    meta = batch.attn_metadata
    assert meta.extend is None and meta.paged[5] == 2 and meta.rope[2] == 2
    batch.seq_lens = batch.seq_lens.long()
    with pytest.raises(ValueError, match="seq_lens"):
        backend.init_forward_metadata(batch)
