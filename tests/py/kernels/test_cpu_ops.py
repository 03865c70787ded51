"""Fused CPU model kernels (sglang.srt.layers.cpu_ops) against the torch layers they replace:
RMSNorm (+ residual), SiluAndMul, RotaryEmbedding.apply + KV store, and paged decode / extend
attention against SDPA over the gathered keys. Every case runs on both vector paths (AVX-512
where the CPU has it, and AVX2), in float32 and bfloat16."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from sglang import _core
from sglang.srt.configs.model_config import RopeConfig
from sglang.srt.layers import cpu_ops
from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.rotary_embedding import RotaryEmbedding

DTYPES = [torch.float32, torch.bfloat16]
ISAS = ["avx2", "avx512"]
# Attention outputs: fp32 against an fp32 reference; bf16 outputs are rounded once (2^-8
# relative) on values of magnitude <= ~3.
ATTN_TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "avx512" and _core.best_cpu_isa() != "avx512":
        pytest.skip("this CPU has no AVX-512")
    _core.set_cpu_isa(request.param)
    assert _core.cpu_isa() == request.param
    yield request.param
    _core.set_cpu_isa("auto")


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---- norms and activation ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [576, 37, 8])
def test_rms_norm_matches_layer(isa: str, dtype: torch.dtype, hidden: int) -> None:
    g = torch.Generator().manual_seed(hidden)
    norm = RMSNorm(hidden, 1e-5, dtype=dtype)
    norm.weight.data = torch.randn(hidden, generator=g).to(dtype)
    x = (torch.randn(9, hidden, generator=g) * 3).to(dtype)
    ref = norm(x)
    got = cpu_ops.rms_norm(x, norm.weight.data, 1e-5)
    assert got.dtype == dtype and got.shape == x.shape
    # fp32: a different summation order only; bf16: the same rounding points as the layer.
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    if dtype == torch.bfloat16:  # an off-by-one-bit differs in < 1% of the elements
        assert (got != ref).float().mean().item() < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_strided_input(isa: str, dtype: torch.dtype) -> None:
    x = torch.randn(6, 130, generator=torch.Generator().manual_seed(1)).to(dtype)[:, 1:129]
    w = torch.rand(128, generator=torch.Generator().manual_seed(2)).to(dtype)
    norm = RMSNorm(128, 1e-6, dtype=dtype)
    norm.weight.data = w
    torch.testing.assert_close(cpu_ops.rms_norm(x, w, 1e-6).float(), norm(x).float())


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_in_place(isa: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    norm = RMSNorm(576, 1e-5, dtype=dtype)
    norm.weight.data = torch.randn(576, generator=g).to(dtype)
    x = torch.randn(17, 576, generator=g).to(dtype)
    res = torch.randn(17, 576, generator=g).to(dtype)
    ref_out, ref_res = norm(x, res)
    x2, res2 = x.clone(), res.clone()
    assert cpu_ops.fused_add_rms_norm_(x2, res2, norm.weight.data, 1e-5) is None
    assert torch.equal(res2, ref_res)  # x + residual rounded to the dtype: exact
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(x2.float(), ref_out.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1536, 13])
def test_silu_and_mul_matches_layer(isa: str, dtype: torch.dtype, d: int) -> None:
    x = (torch.randn(7, 2 * d, generator=torch.Generator().manual_seed(d)) * 4).to(dtype)
    x[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -20.0]).to(dtype)
    ref = SiluAndMul()(x)
    got = cpu_ops.silu_and_mul(x)
    assert got.shape == (7, d) and got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=2e-6)
    else:
        torch.testing.assert_close(got.float(), ref.float(), atol=1e-2, rtol=8e-3)


def test_norm_and_silu_reject_bad_inputs() -> None:
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        cpu_ops.rms_norm(x.half(), torch.ones(8).half(), 1e-6)
    with pytest.raises(ValueError, match="weight"):
        cpu_ops.rms_norm(x, torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="2-D"):
        cpu_ops.rms_norm(x.t(), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="even"):
        cpu_ops.silu_and_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="must match"):
        cpu_ops.fused_add_rms_norm_(x, x.bfloat16(), torch.ones(8), 1e-6)


# ---- RoPE + KV store ---------------------------------------------------------------------------

H, KVH, D = 9, 3, 64


def _qkv(tokens: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(tokens, (H + 2 * KVH) * D, generator=torch.Generator().manual_seed(seed)).to(
        dtype
    )


def _split(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = qkv.shape[0]
    q = qkv[:, : H * D].view(t, H, D)
    k = qkv[:, H * D : (H + KVH) * D].view(t, KVH, D)
    v = qkv[:, (H + KVH) * D :].view(t, KVH, D)
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope_type", ["default", "llama3"])
def test_rope_kv_store_matches_rotary_embedding(
    isa: str, dtype: torch.dtype, rope_type: str
) -> None:
    cfg = RopeConfig(
        theta=100000.0, rope_type=rope_type, factor=8.0, original_max_position_embeddings=512
    )
    rope = RotaryEmbedding(D, 8192, cfg, dtype=dtype)
    tokens = 23
    g = torch.Generator().manual_seed(5)
    qkv = _qkv(tokens, dtype, 6)
    q, k, v = _split(qkv)
    positions = torch.randint(0, 8192, (tokens,), generator=g)
    slots = torch.randperm(200, generator=g)[:tokens]
    cos_sin = rope.lookup(positions)
    ref_q, ref_k = RotaryEmbedding.apply(q, cos_sin), RotaryEmbedding.apply(k, cos_sin)
    k_before, v_before = k.clone(), v.clone()
    k_cache = torch.zeros(200, KVH, D, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    cpu_ops.rope_kv_store_(
        q, k, v, positions, rope.cos_cache, rope.sin_cache, k_cache, v_cache, slots
    )
    atol = 1e-6 if dtype == torch.float32 else 0.0
    torch.testing.assert_close(q, ref_q, atol=atol, rtol=0)
    torch.testing.assert_close(k_cache[slots], ref_k, atol=atol, rtol=0)
    assert torch.equal(v_cache[slots], v_before)
    assert torch.equal(k, k_before)  # k itself is not rotated
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[slots] = False
    assert not k_cache[untouched].any() and not v_cache[untouched].any()


def test_rope_kv_store_rejects_out_of_range() -> None:
    rope = RotaryEmbedding(D, 64, RopeConfig(), dtype=torch.float32)
    q, k, v = _split(_qkv(2, torch.float32, 1))
    caches = torch.zeros(8, KVH, D), torch.zeros(8, KVH, D)
    ok = torch.tensor([0, 1])
    q_before = q.clone()
    with pytest.raises(_core.CoreError):
        cpu_ops.rope_kv_store_(
            q, k, v, torch.tensor([0, 64]), rope.cos_cache, rope.sin_cache, *caches, ok
        )
    with pytest.raises(_core.CoreError):
        cpu_ops.rope_kv_store_(
            q, k, v, ok, rope.cos_cache, rope.sin_cache, *caches, torch.tensor([0, 8])
        )
    assert torch.equal(q, q_before) and not caches[0].any()
    with pytest.raises(ValueError, match="out_slots"):
        cpu_ops.rope_kv_store_(q, k, v, ok, rope.cos_cache, rope.sin_cache, *caches, ok.int())


# ---- paged attention ---------------------------------------------------------------------------

SLOTS = 6000


def _cache(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(SLOTS, KVH, D, generator=g).to(dtype)
    v = torch.randn(SLOTS, KVH, D, generator=g).to(dtype)
    return k, v


def _table(lens: list[int], rows: list[int], seed: int) -> torch.Tensor:
    """A slot table [8, 2100] with random distinct slots for each used row (garbage elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, SLOTS, (8, 2100), generator=g, dtype=torch.int32)
    for row, n in zip(rows, lens):
        table[row, :n] = torch.randperm(SLOTS, generator=g)[:n].int()
    return table


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: int) -> torch.Tensor:
    """SDPA in fp32 of q [n, H, D] at positions prefix.. over k/v [prefix + n, KVH, D]."""
    n, keys = q.shape[0], k.shape[0]
    mask = torch.arange(keys)[None, :] <= torch.arange(prefix, prefix + n)[:, None]
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1),
        k.float().transpose(0, 1),
        v.float().transpose(0, 1),
        attn_mask=mask,
        scale=D**-0.5,
        enable_gqa=True,
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens", [[1], [2048], [1, 37, 513, 2048, 129]])
def test_paged_decode_attention(isa: str, dtype: torch.dtype, lens: list[int]) -> None:
    rows = [7, 0, 3, 1, 5][: len(lens)]
    k_cache, v_cache = _cache(dtype, 11)
    table = _table(lens, rows, 12)
    q = torch.randn(len(lens), H, D, generator=torch.Generator().manual_seed(13)).to(dtype)
    out = cpu_ops.paged_decode_attention(
        q,
        k_cache,
        v_cache,
        table,
        torch.tensor(rows),
        torch.tensor(lens, dtype=torch.int32),
        D**-0.5,
    )
    assert out.shape == q.shape and out.dtype == dtype
    for b, (row, n) in enumerate(zip(rows, lens)):
        slots = table[row, :n].long()
        ref = _reference(q[b : b + 1], k_cache[slots], v_cache[slots], n - 1)[0]
        assert _max_err(out[b], ref) < ATTN_TOL[dtype], (b, n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_decode_attention_mha_and_wide_heads(isa: str, dtype: torch.dtype) -> None:
    """No GQA (group 1), a 12-head group (two passes) and head_dim 128 / 80."""
    for heads, kv_heads, dim in [(4, 4, 128), (12, 1, 80)]:
        g = torch.Generator().manual_seed(dim)
        k_cache = torch.randn(500, kv_heads, dim, generator=g).to(dtype)
        v_cache = torch.randn(500, kv_heads, dim, generator=g).to(dtype)
        lens = [300, 5]
        table = torch.stack([torch.randperm(500, generator=g)[:300] for _ in range(2)]).int()
        q = torch.randn(2, heads, dim, generator=g).to(dtype)
        out = cpu_ops.paged_decode_attention(
            q,
            k_cache,
            v_cache,
            table,
            torch.tensor([1, 0]),
            torch.tensor(lens, dtype=torch.int32),
            0.1,
        )
        for b, (row, n) in enumerate(zip([1, 0], lens)):
            slots = table[row, :n].long()
            ref = F.scaled_dot_product_attention(
                q[b].float()[:, None],
                k_cache[slots].float().transpose(0, 1),
                v_cache[slots].float().transpose(0, 1),
                scale=0.1,
                enable_gqa=True,
            )[:, 0]
            assert _max_err(out[b], ref) < ATTN_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "prefix, extend",
    [([0], [100]), ([200], [70]), ([0, 100, 7, 1000], [70, 33, 1, 5])],
)
def test_extend_attention(
    isa: str, dtype: torch.dtype, prefix: list[int], extend: list[int]
) -> None:
    rows = [2, 4, 0, 6][: len(prefix)]
    seq = [p + e for p, e in zip(prefix, extend)]
    starts = [0]
    for e in extend:
        starts.append(starts[-1] + e)
    k_cache, v_cache = _cache(dtype, 21)
    table = _table(seq, rows, 22)
    q = torch.randn(starts[-1], H, D, generator=torch.Generator().manual_seed(23)).to(dtype)
    out = cpu_ops.extend_attention(
        q,
        k_cache,
        v_cache,
        table,
        torch.tensor(rows),
        torch.tensor(prefix, dtype=torch.int32),
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor(seq, dtype=torch.int32),
        D**-0.5,
    )
    for b in range(len(prefix)):
        slots = table[rows[b], : seq[b]].long()
        ref = _reference(q[starts[b] : starts[b + 1]], k_cache[slots], v_cache[slots], prefix[b])
        assert _max_err(out[starts[b] : starts[b + 1]], ref) < ATTN_TOL[dtype], b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads, kv_heads, dim", [(4, 4, 128), (12, 1, 80), (6, 2, 32)])
def test_extend_attention_other_head_shapes(
    isa: str, dtype: torch.dtype, heads: int, kv_heads: int, dim: int
) -> None:
    """Extend with no GQA, a 12-head group (several row passes) and head_dim 128 / 80 / 32."""
    g = torch.Generator().manual_seed(dim)
    k_cache = torch.randn(400, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(400, kv_heads, dim, generator=g).to(dtype)
    prefix = [65, 0]  # 40 and 3 new tokens
    table = torch.stack([torch.randperm(400, generator=g)[:120] for _ in range(2)]).int()
    q = torch.randn(43, heads, dim, generator=g).to(dtype)
    out = cpu_ops.extend_attention(
        q,
        k_cache,
        v_cache,
        table,
        torch.tensor([1, 0]),
        torch.tensor(prefix, dtype=torch.int32),
        torch.tensor([0, 40, 43], dtype=torch.int32),
        torch.tensor([105, 3], dtype=torch.int32),
        0.1,
    )
    for b, (row, p, s, e) in enumerate(zip([1, 0], prefix, [105, 3], [0, 40, 43])):
        slots = table[row, :s].long()
        n = s - p
        mask = torch.arange(s)[None, :] <= torch.arange(p, s)[:, None]
        ref = F.scaled_dot_product_attention(
            q[e : e + n].float().transpose(0, 1),
            k_cache[slots].float().transpose(0, 1),
            v_cache[slots].float().transpose(0, 1),
            attn_mask=mask,
            scale=0.1,
            enable_gqa=True,
        ).transpose(0, 1)
        assert _max_err(out[e : e + n], ref) < ATTN_TOL[dtype], b


def test_attention_rejects_bad_tables() -> None:
    k_cache, v_cache = _cache(torch.float32, 1)
    q = torch.randn(1, H, D)
    table = torch.zeros(2, 16, dtype=torch.int32)
    rpi, lens = torch.tensor([0]), torch.tensor([4], dtype=torch.int32)
    table[0, 2] = SLOTS  # out of range slot
    with pytest.raises(_core.CoreError):
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, table, rpi, lens, 1.0)
    table[0, 2] = 0
    with pytest.raises(_core.CoreError):  # a row past the table
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, table, torch.tensor([2]), lens, 1.0)
    with pytest.raises(_core.CoreError):  # longer than the table's rows
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, table, rpi, lens * 5, 1.0)
    with pytest.raises(ValueError, match="req_pool_indices"):
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, table, rpi.int(), lens, 1.0)
    with pytest.raises(_core.CoreError):  # seq_len != prefix + extend
        cpu_ops.extend_attention(
            q, k_cache, v_cache, table, rpi, torch.tensor([2], dtype=torch.int32),
            torch.tensor([0, 1], dtype=torch.int32), lens, 1.0,
        )  # fmt: skip


def test_custom_ops_registered() -> None:
    x = torch.randn(3, 8)
    w = torch.rand(8)
    torch.testing.assert_close(torch.ops.sglang.rms_norm(x, w, 1e-6), cpu_ops.rms_norm(x, w, 1e-6))
    torch.testing.assert_close(torch.ops.sglang.silu_and_mul(x), cpu_ops.silu_and_mul(x))
    x2, r2 = x.clone(), x.clone()
    torch.ops.sglang.fused_add_rms_norm_(x2, r2, w, 1e-6)
    torch.testing.assert_close(r2, 2 * x)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(5, 16)
        assert torch.ops.sglang.silu_and_mul(fake).shape == (5, 8)
        assert torch.ops.sglang.rms_norm(fake, torch.empty(16), 1e-6).shape == (5, 16)
