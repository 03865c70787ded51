"""Microbenchmark of the fused CPU model kernels against their torch equivalents.

SmolLM2-135M shapes (hidden 576, 9 heads, 3 KV heads, head_dim 64, intermediate 1536): decode at
batch 1 and 16 with context 512, and an extend (prefill) of 512 tokens. Each row times one layer's
call of the kernel (fused: ``sglang.srt.layers.cpu_ops`` / ``CpuAttnBackend``; torch: the model's
current layers and ``TorchNativeAttnBackend``), median over repeats, in microseconds. A few
seconds in all.

Usage: python benchmarks/bench_cpu_ops.py [--dtype bfloat16|float32] [--isa auto|avx2|avx512]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from sglang import _core
from sglang.srt.configs.model_config import RopeConfig
from sglang.srt.layers import cpu_ops
from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.attention.cpu_backend import CpuAttnBackend
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.rotary_embedding import RotaryEmbedding
from sglang.srt.mem_cache.kv_pool import KVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode

HIDDEN, H, KVH, D, INTER = 576, 9, 3, 64, 1536
CTX = 512


def timeit(fn: Callable[[], object], budget_s: float = 0.15) -> float:
    """Median microseconds per call (calls batched so each sample takes about 1 ms)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(1e-3 / once))
    samples = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(samples) < 5:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples) * 1e6


def make_batch(prefix: int, extend: int, bs: int, decode: bool) -> ForwardBatch:
    g = torch.Generator().manual_seed(0)
    seq = prefix + extend
    table = torch.zeros(bs, seq, dtype=torch.int32)
    perm = (torch.randperm(bs * seq + 1, generator=g)[: bs * seq] + 1).int()  # scattered slots
    table.copy_(perm.view(bs, seq))
    out_slots = table[:, prefix:].reshape(-1).long()
    positions = torch.arange(prefix, seq).repeat(bs)
    starts = [i * extend for i in range(bs + 1)]
    i32 = torch.int32
    return ForwardBatch(
        mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
        batch_size=bs,
        num_tokens=bs * extend,
        input_ids=torch.zeros(bs * extend, dtype=torch.int64),
        positions=positions,
        out_slots=out_slots,
        req_pool_indices=torch.arange(bs),
        seq_lens=torch.full((bs,), seq, dtype=i32),
        prefix_lens=torch.full((bs,), prefix, dtype=i32),
        extend_lens=torch.full((bs,), extend, dtype=i32),
        extend_start=torch.tensor(starts, dtype=i32),
        logits_rows=torch.arange(bs),
        req_to_token=table,
        req_pool_indices_cpu=list(range(bs)),
        seq_lens_cpu=[seq] * bs,
        prefix_lens_cpu=[prefix] * bs,
        extend_start_cpu=starts,
    )


def bench_shape(name: str, tokens: int, batch: ForwardBatch, dtype: torch.dtype) -> list[tuple]:
    rows = []
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, HIDDEN, generator=g).to(dtype)
    res = torch.randn(tokens, HIDDEN, generator=g).to(dtype)
    norm = RMSNorm(HIDDEN, 1e-5, dtype=dtype)
    w = norm.weight.data
    rows.append(("rms_norm", timeit(lambda: norm(x)), timeit(lambda: cpu_ops.rms_norm(x, w, 1e-5))))
    rows.append(
        (
            "fused_add_rms_norm",
            timeit(lambda: norm(x, res)),
            timeit(lambda: cpu_ops.fused_add_rms_norm_(x, res, w, 1e-5)),
        )
    )
    gate_up = torch.randn(tokens, 2 * INTER, generator=g).to(dtype)
    act = SiluAndMul()
    rows.append(
        (
            "silu_and_mul",
            timeit(lambda: act(gate_up)),
            timeit(lambda: cpu_ops.silu_and_mul(gate_up)),
        )
    )

    rope = RotaryEmbedding(D, 8192, RopeConfig(), dtype=dtype)
    qkv = torch.randn(tokens, (H + 2 * KVH) * D, generator=g).to(dtype)
    q = qkv[:, : H * D].view(tokens, H, D)
    k = qkv[:, H * D : (H + KVH) * D].view(tokens, KVH, D)
    v = qkv[:, (H + KVH) * D :].view(tokens, KVH, D)
    slots = int(batch.req_to_token.max()) + 1
    pool = KVPool(slots, 1, KVH, D, dtype, "cpu")
    pool.k[0].normal_()
    pool.v[0].normal_()
    layer = RadixAttention(0, H, KVH, D, D**-0.5)

    def torch_rope() -> None:
        cos_sin = rope.lookup(batch.positions)  # once per step in the model; per layer here
        pool.set_kv(0, batch.out_slots, RotaryEmbedding.apply(k, cos_sin), v)
        RotaryEmbedding.apply(q, cos_sin)

    kc, vc = pool.get_kv(0)
    rows.append(
        (
            "rope + kv store",
            timeit(torch_rope),
            timeit(
                lambda: cpu_ops.rope_kv_store_(
                    q,
                    k,
                    v,
                    batch.positions,
                    rope.cos_cache,
                    rope.sin_cache,
                    kc,
                    vc,
                    batch.out_slots,
                )
            ),
        )
    )

    batch.kv_pool = pool
    native, fused = TorchNativeAttnBackend(), CpuAttnBackend()
    batch.attn_metadata = None
    native.init_forward_metadata(batch)
    native_meta = batch.attn_metadata
    batch.attn_metadata = None
    fused.init_forward_metadata(batch)
    fused_meta = batch.attn_metadata
    qr = q.contiguous()

    def run_native() -> None:
        batch.attn_metadata = native_meta
        native.forward(qr, k, v, layer, batch)

    def run_fused() -> None:
        batch.attn_metadata = fused_meta
        fused.forward(qr, k, v, layer, batch)

    def run_fused_rope() -> None:
        batch.attn_metadata = fused_meta
        fused.forward_rope(q, k, v, rope.cos_cache, rope.sin_cache, layer, batch)

    label = "decode attention" if batch.is_decode else "extend attention"
    rows.append((f"{label} (store + attend)", timeit(run_native), timeit(run_fused)))
    rows.append(
        (
            f"{label} + rope (forward_rope)",
            timeit(lambda: (torch_rope(), run_native())),
            timeit(run_fused_rope),
        )
    )
    print(
        f"\n{name}  ({tokens} tokens, {dtype}, isa {_core.cpu_isa()}, {torch.get_num_threads()} threads)"
    )
    print(f"  {'kernel':<40}{'torch us':>10}{'fused us':>10}{'speedup':>9}")
    for kernel, t_torch, t_fused in rows:
        print(f"  {kernel:<40}{t_torch:>10.1f}{t_fused:>10.1f}{t_torch / t_fused:>8.2f}x")
    return rows


def bench_overhead(dtype: torch.dtype) -> None:
    x = torch.randn(1, HIDDEN).to(dtype)
    w = torch.ones(HIDDEN, dtype=dtype)
    direct = timeit(lambda: cpu_ops.rms_norm(x, w, 1e-5))
    op = timeit(lambda: torch.ops.sglang.rms_norm(x, w, 1e-5))
    print(f"\nper-call overhead, rms_norm [1, {HIDDEN}]: plain function {direct:.1f} us, ")
    print(f"  torch.ops.sglang.rms_norm (custom op dispatch) {op:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--isa", default="auto", choices=["auto", "avx2", "avx512"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    _core.set_cpu_isa(args.isa)
    bench_shape("decode bs=1, ctx 512", 1, make_batch(CTX - 1, 1, 1, True), dtype)
    bench_shape("decode bs=16, ctx 512", 16, make_batch(CTX - 1, 1, 16, True), dtype)
    bench_shape("extend 512 tokens (no prefix)", 512, make_batch(0, 512, 1, False), dtype)
    bench_overhead(dtype)
    _core.set_cpu_isa("auto")


if __name__ == "__main__":
    main()
