"""Microbenchmark of the GGUF block-quant CPU kernels on SmolLM2-135M's linear shapes.

For every (format, ISA path, shape N x K, M rows) it times
  * ``gemv``: the raw ``_core.quant_matmul_cpu`` kernel (blocks decoded in registers),
  * ``op``: ``torch.ops.sglang.quant_matmul`` (GEMV kernel or dequantize + torch.mm by M),
  * ``fp32``: ``F.linear`` on the fp32 dequantized weight (the baseline),
and prints milliseconds (best of the repetitions) and the effective GB/s of weight bytes read
(block bytes for gemv / op, 4 * N * K for fp32). Random weights: quantized random floats for
Q4_0 / Q4_1 / Q8_0, random bytes with small fp16 scales for the K-quants.

    PYTHONPATH=python python benchmarks/bench_quant_kernels.py             # everything
    PYTHONPATH=python python benchmarks/bench_quant_kernels.py --formats Q4_1 Q8_0 --m 1 512
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sglang import _core
from sglang.srt.layers.quantization import kernels
from sglang.utils import cpu_model_name

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]


def random_blocks(fmt: int, n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """uint8 [n, row_bytes] of valid random blocks of ggml type `fmt`."""
    info = kernels.format_info(fmt)
    if fmt == 8:
        return kernels.quantize_q8_0(torch.from_numpy(rng.standard_normal((n, k), np.float32)))
    if fmt in (2, 3):
        import gguf

        data = rng.standard_normal((n, k), np.float32)
        return torch.from_numpy(gguf.quants.quantize(data, gguf.GGMLQuantizationType(fmt)))
    blocks = k // info.block_size
    raw = rng.integers(0, 256, (n, blocks, info.block_bytes), dtype=np.uint8)
    scales = np.exp2(rng.uniform(-8, -4, (n, blocks, 2))).astype(np.float16)
    scale_bytes = scales.view(np.uint8).reshape(n, blocks, 4)
    if fmt == 14:
        raw[..., 208:210] = scale_bytes[..., :2]
    else:
        raw[..., 0:4] = scale_bytes
    return torch.from_numpy(raw.reshape(n, -1))


def best_ms(fn: Callable[[], object], min_time: float, max_reps: int) -> float:
    """Best wall time of fn in ms, over repetitions filling about min_time seconds."""
    fn()
    best, start, reps = float("inf"), time.perf_counter(), 0
    while reps < max_reps and (reps < 2 or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        reps += 1
    return best * 1e3


def time_quant(
    fmt: int, w: torch.Tensor, k: int, m: int, args: argparse.Namespace
) -> tuple[float, float]:
    """(raw GEMV kernel ms, torch op ms) for M random rows."""
    n = w.shape[0]
    x = torch.randn(m, k)
    out = torch.empty(m, n)

    def gemv() -> None:
        _core.quant_matmul_cpu(fmt, w.data_ptr(), n, k, x.data_ptr(), m, k, 0, out.data_ptr(), n)

    t_gemv = best_ms(gemv, args.min_time, args.max_reps)
    t_op = best_ms(lambda: kernels.quant_matmul(x, w, fmt, k), args.min_time, args.max_reps)
    return t_gemv, t_op


def time_fp32(w32: torch.Tensor, m: int, args: argparse.Namespace) -> float:
    """F.linear ms on the fp32 weight for M random rows."""
    x = torch.randn(m, w32.shape[1])
    return best_ms(lambda: F.linear(x, w32), args.min_time, args.max_reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=[f.name for f in kernels.FORMATS.values()])
    parser.add_argument("--isa", nargs="+", default=["avx2", "avx512"])
    parser.add_argument("--m", nargs="+", type=int, default=[1, 4, 16, 512])
    parser.add_argument("--shapes", nargs="+", default=[f"{n}x{k}" for n, k in SHAPES])
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per measurement")
    parser.add_argument("--max-reps", type=int, default=50)
    parser.add_argument("--no-fp32", action="store_true", help="skip the F.linear baseline")
    args = parser.parse_args()

    print(
        f"CPU: {cpu_model_name()}; best ISA {_core.best_cpu_isa()}; torch threads "
        f"{torch.get_num_threads()}; rows per GEMV pass (auto) {_core.quant_matmul_rows_per_pass()}"
    )
    print(
        f"{'fmt':5} {'isa':6} {'N x K':>10} {'M':>4} | {'gemv ms':>8} {'GB/s':>6} | "
        f"{'op ms':>8} {'GB/s':>6} | {'fp32 ms':>8} {'GB/s':>6} | {'op/fp32':>7}"
    )
    rng = np.random.default_rng(0)
    fp32_cache: dict[tuple[str, int], float] = {}
    try:
        for name in args.formats:
            fmt = kernels.format_info(name).type_id
            for shape in args.shapes:
                n, k = (int(v) for v in shape.split("x"))
                if k % kernels.format_info(fmt).block_size != 0:
                    continue  # K-quants need K % 256 == 0 (GGUF files fall back to Q5_0/Q8_0)
                w = random_blocks(fmt, n, k, rng)
                w32 = kernels.dequantize(w, fmt, k)
                for isa in args.isa:
                    if isa == "avx512" and _core.best_cpu_isa() != "avx512":
                        continue
                    _core.set_cpu_isa(isa)
                    for m in args.m:
                        t_gemv, t_op = time_quant(fmt, w, k, m, args)
                        key = (shape, m)
                        if not args.no_fp32 and key not in fp32_cache:
                            fp32_cache[key] = time_fp32(w32, m, args)
                        t32 = fp32_cache.get(key, float("nan"))
                        qb, fb = w.numel() / 1e6, n * k * 4 / 1e6  # MB; MB/ms = GB/s
                        print(
                            f"{name:5} {isa:6} {shape:>10} {m:>4} | {t_gemv:8.3f} "
                            f"{qb / t_gemv:6.1f} | {t_op:8.3f} {qb / t_op:6.1f} | "
                            f"{t32:8.3f} {fb / t32:6.1f} | {t_op / t32:7.2f}",
                            flush=True,
                        )
    finally:
        _core.set_cpu_isa("auto")


if __name__ == "__main__":
    main()
