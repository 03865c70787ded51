"""Benchmark of the native core through its Python binding.

1. Decode step: schedule() + the plan arrays a model runner reads + commit() with N running
   requests (default 256), binding included. Target: < 100 us per step at 256 requests.
2. Radix cache: insert and match_prefix throughput on prompts that share system prompts.

Usage: python benchmarks/bench_core.py [--running 256] [--prompt-len 512] [--steps 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sglang import _core


def make_scheduler(args: argparse.Namespace, page_size: int) -> _core.Scheduler:
    cfg = _core.SchedulerConfig()
    cfg.max_running_requests = args.running
    cfg.context_length = args.prompt_len + args.steps + 64
    cfg.max_total_tokens = args.running * cfg.context_length
    cfg.max_prefill_tokens = 16384
    cfg.chunked_prefill_size = 8192
    cfg.page_size = page_size
    cfg.vocab_size = 50000
    cfg.eos_token_ids = [0]
    return _core.Scheduler(cfg)


def bench_decode(args: argparse.Namespace, page_size: int, penalties: bool) -> dict[str, float]:
    rng = np.random.default_rng(0)
    sched = make_scheduler(args, page_size)
    for _ in range(args.running):
        prompt = rng.integers(1, 50000, size=args.prompt_len, dtype=np.int32)
        sched.add_request(
            prompt, max_new_tokens=args.steps + 32, ignore_eos=True, penalty_scope=1 if penalties else 0
        )
    # Prefill everything first.
    while True:
        plan = sched.schedule()
        if plan.mode == _core.ForwardMode.DECODE:
            sched.commit(rng.integers(1, 50000, size=plan.num_samples, dtype=np.int32))
            break
        sched.commit(rng.integers(1, 50000, size=plan.num_samples, dtype=np.int32))
    assert sched.stats().num_running == args.running
    token_pool = rng.integers(1, 50000, size=(args.steps, args.running), dtype=np.int32)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        plan = sched.schedule()
        # What the model runner touches each step.
        _ = (plan.input_ids, plan.positions, plan.out_slots, plan.req_pool_indices, plan.seq_lens)
        if penalties:
            _ = (plan.penalty_indptr, plan.penalty_token_ids, plan.penalty_counts)
        sched.commit(token_pool[i])
        times.append(time.perf_counter() - t0)
    assert plan.num_reqs == args.running
    sched.check_integrity()
    times_us = np.array(times) * 1e6
    return {
        "median_us": float(np.median(times_us)),
        "p90_us": float(np.percentile(times_us, 90)),
        "mean_us": float(times_us.mean()),
    }


def bench_schedule_only(args: argparse.Namespace) -> float:
    """Cost of the C++ schedule()+commit() without building the Python views (for reference)."""
    rng = np.random.default_rng(1)
    sched = make_scheduler(args, 1)
    for _ in range(args.running):
        sched.add_request(rng.integers(1, 50000, size=args.prompt_len, dtype=np.int32),
                          max_new_tokens=args.steps + 32, ignore_eos=True)
    while sched.stats().num_running < args.running or sched.stats().num_waiting:
        plan = sched.schedule()
        sched.commit(np.ones(plan.num_samples, dtype=np.int32))
    ids = np.ones(args.running, dtype=np.int32)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        sched.schedule()
        sched.commit(ids)
    return (time.perf_counter() - t0) / args.steps * 1e6


def bench_radix(num_seqs: int, seq_len: int, page_size: int) -> dict[str, float]:
    rng = np.random.default_rng(2)
    systems = [rng.integers(1, 50000, size=seq_len // 2, dtype=np.int32) for _ in range(16)]
    seqs = []
    for i in range(num_seqs):
        tail = rng.integers(1, 50000, size=seq_len - seq_len // 2, dtype=np.int32)
        seqs.append(np.concatenate([systems[i % 16], tail]))
    alloc = _core.PageAllocator(num_seqs * seq_len // page_size + 16, page_size)
    cache = _core.RadixCache(alloc)
    t_insert = 0.0
    for s in seqs:
        pages = alloc.alloc(len(s) // page_size)
        t0 = time.perf_counter()
        cache.insert(s, pages)
        t_insert += time.perf_counter() - t0
        for p in pages:
            alloc.unref(int(p))
    t0 = time.perf_counter()
    matched = 0
    for s in seqs:
        matched += cache.match_prefix(s, True)[0]
    t_match = time.perf_counter() - t0
    cache.check_integrity()
    assert matched == num_seqs * seq_len
    total = num_seqs * seq_len
    return {
        "insert_ops_s": num_seqs / t_insert,
        "insert_mtok_s": total / t_insert / 1e6,
        "match_ops_s": num_seqs / t_match,
        "match_mtok_s": total / t_match / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--running", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--radix-seqs", type=int, default=4000)
    ap.add_argument("--radix-len", type=int, default=512)
    args = ap.parse_args()

    print(f"decode step, {args.running} running requests, prompt {args.prompt_len}, "
          f"{args.steps} steps (schedule + plan arrays + commit, through the binding)")
    print(f"{'page_size':>9} {'penalties':>9} {'median us':>10} {'p90 us':>8} {'mean us':>8}")
    for page_size, penalties in [(1, False), (16, False), (1, True)]:
        r = bench_decode(args, page_size, penalties)
        print(f"{page_size:>9} {penalties!s:>9} {r['median_us']:>10.1f} {r['p90_us']:>8.1f} "
              f"{r['mean_us']:>8.1f}")
    print(f"schedule()+commit() alone, page_size 1: {bench_schedule_only(args):.1f} us/step")
    print()
    print(f"radix cache, {args.radix_seqs} sequences of {args.radix_len} tokens "
          "(16 shared system prompts of half the length)")
    print(f"{'page_size':>9} {'insert/s':>10} {'insert Mtok/s':>14} {'match/s':>10} "
          f"{'match Mtok/s':>13}")
    for page_size in (1, 16):
        r = bench_radix(args.radix_seqs, args.radix_len, page_size)
        print(f"{page_size:>9} {r['insert_ops_s']:>10.0f} {r['insert_mtok_s']:>14.1f} "
              f"{r['match_ops_s']:>10.0f} {r['match_mtok_s']:>13.1f}")


if __name__ == "__main__":
    main()
