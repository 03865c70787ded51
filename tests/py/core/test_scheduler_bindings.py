"""sglang._core scheduler bindings: numpy in and out, handles, errors, and a driver loop in Python.

The fake model stores each token in its "KV cache" at the slot the plan names and predicts the
next token from the sequence it reads back through ``req_to_token``, so the outputs equal the
reference only if the core's slot management (prefix reuse, chunks, retraction) is right.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sglang import _core

VOCAB = 64
EOS = 0


def next_token(seq: np.ndarray) -> int:
    h = 1469598103934665603
    for t in seq.tolist():
        h = ((h ^ t) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 33
    return h % VOCAB


def reference(prompt: list[int], max_new: int, ignore_eos: bool) -> list[int]:
    seq, out = list(prompt), []
    while len(out) < max_new:
        t = next_token(np.array(seq))
        seq.append(t)
        out.append(t)
        if not ignore_eos and t == EOS:
            break
    return out


class Driver:
    def __init__(self, **overrides: object) -> None:
        cfg = _core.SchedulerConfig()
        cfg.max_total_tokens = 4096
        cfg.context_length = 512
        cfg.vocab_size = VOCAB
        cfg.eos_token_ids = [EOS]
        for k, v in overrides.items():
            setattr(cfg, k, v)
        self.sched = _core.Scheduler(cfg)
        self.kv = np.full(self.sched.num_slots, -1, dtype=np.int64)
        self.table = self.sched.req_to_token()
        self.outputs: dict[int, list[int]] = {}
        self.finish: dict[int, int] = {}
        self.retracted = 0

    def step(self) -> _core.ForwardMode:
        plan = self.sched.schedule()
        self.sched.check_integrity()
        self.retracted += len(plan.retracted)
        if plan.mode == _core.ForwardMode.IDLE:
            return plan.mode
        self.kv[plan.out_slots] = plan.input_ids
        next_ids = np.empty(plan.num_samples, dtype=np.int32)
        for k, (r, row) in enumerate(zip(plan.sample_indices, plan.sample_rows)):
            assert row == plan.extend_start[r + 1] - 1
            slots = self.table[plan.req_pool_indices[r], : plan.seq_lens[r]]
            next_ids[k] = next_token(self.kv[slots])
        rids, tokens, reasons, _ = self.sched.commit(next_ids)
        self.sched.check_integrity()
        for rid, tok, reason in zip(rids.tolist(), tokens.tolist(), reasons.tolist()):
            if tok >= 0:
                self.outputs.setdefault(rid, []).append(tok)
            if reason != int(_core.FinishReason.NONE):
                self.finish[rid] = reason
        return plan.mode

    def run(self) -> None:
        for _ in range(100000):
            if self.sched.idle():
                break
            self.step()
        assert self.sched.idle()
        self.sched.check_integrity()


def test_import_sglang_is_light() -> None:
    code = (
        "import sys, sglang; "
        "bad = [m for m in ('torch', 'sglang._core', 'sglang._cuda') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_plan_arrays_are_int32_views_that_outlive_the_plan() -> None:
    d = Driver()
    d.sched.add_request(np.arange(1, 11, dtype=np.int32), max_new_tokens=4)
    plan = d.sched.schedule()
    assert plan.mode == _core.ForwardMode.EXTEND
    ids = plan.input_ids
    assert ids.dtype == np.int32 and ids.base is not None
    assert ids.tolist() == list(range(1, 11))
    assert plan.positions.tolist() == list(range(10))
    assert plan.sample_rows.tolist() == [9]
    del plan
    assert ids.tolist() == list(range(1, 11))  # the view keeps the plan alive
    with pytest.raises(ValueError):
        d.table[0, 0] = 5  # the slot table is read-only from Python


def test_inputs_accept_lists_and_other_int_dtypes() -> None:
    d = Driver()
    a = d.sched.add_request([1, 2, 3], max_new_tokens=2)
    b = d.sched.add_request(np.array([1, 2, 3], dtype=np.int64), max_new_tokens=2)
    assert a != b
    d.run()
    assert d.outputs[a] == d.outputs[b] == reference([1, 2, 3], 2, False)[:2]


def test_errors_map_to_core_error_with_clear_messages() -> None:
    d = Driver(context_length=16)
    with pytest.raises(_core.CoreError) as e:
        d.sched.add_request(np.arange(20, dtype=np.int32))
    assert str(e.value) == (
        "The input (20 tokens) is longer than the model's context length (16 tokens)."
    )
    with pytest.raises(_core.CoreError, match="out of the vocabulary range"):
        d.sched.add_request([1, VOCAB + 3])
    with pytest.raises(_core.CoreError, match="empty"):
        d.sched.add_request(np.array([], dtype=np.int32))
    with pytest.raises(_core.CoreError, match="commit"):
        d.sched.commit(np.array([1], dtype=np.int32))
    assert d.sched.idle()
    d.sched.check_integrity()


def test_chunked_prefix_and_retraction_give_reference_outputs() -> None:
    d = Driver(
        max_total_tokens=192,
        context_length=192,
        page_size=4,
        chunked_prefill_size=16,
        init_new_token_ratio=0.0,
        min_new_token_ratio=0.0,
    )
    system = [(3 + 7 * i) % VOCAB for i in range(40)]
    prompts = [system + [10 + i] for i in range(6)]
    rids = [d.sched.add_request(prompts[0], max_new_tokens=40, ignore_eos=True)]
    d.step()
    d.step()
    d.step()
    rids += [d.sched.add_request(p, max_new_tokens=40, ignore_eos=True) for p in prompts[1:]]
    d.run()
    for rid, prompt in zip(rids, prompts):
        assert d.outputs[rid] == reference(prompt, 40, True)
    stats = d.sched.stats()
    assert stats.cache_hit_tokens > 0
    assert d.retracted > 0 and stats.num_retractions == d.retracted
    assert stats.num_used_tokens == 0


def test_abort_and_request_info() -> None:
    d = Driver()
    rid = d.sched.add_request(np.arange(1, 9, dtype=np.int32), max_new_tokens=50, ignore_eos=True)
    info = d.sched.request_info(rid)
    assert info["state"] == 0 and info["prompt_len"] == 8
    d.step()
    d.step()
    assert d.sched.output_ids(rid).tolist() == d.outputs[rid]
    assert d.sched.abort(rid) == _core.AbortResult.DONE
    assert d.sched.abort(rid) == _core.AbortResult.NOT_FOUND
    assert d.sched.request_info(rid) is None
    assert d.sched.idle()
    d.sched.check_integrity()
    assert d.sched.flush_cache()
    assert d.sched.stats().num_free_tokens == 4096


def test_penalty_scope_fills_plan_csr() -> None:
    d = Driver()
    d.sched.add_request([5, 5, 6], penalty_scope=2, min_new_tokens=1, stop_token_ids=[9])
    plan = d.sched.schedule()
    assert plan.penalty_indptr.tolist() == [0, 2]
    assert plan.penalty_token_ids.tolist() == [5, 6]
    assert plan.penalty_counts.tolist() == [0, 0]
    assert plan.ban_token_ids.tolist() == [EOS, 9]


def test_request_limits_are_the_schedulers_rules() -> None:
    d = Driver(context_length=16)
    limits = d.sched.limits()
    assert (limits.context_length, limits.vocab_size) == (16, VOCAB)
    for bad in ([], [1, VOCAB], list(range(1, 18))):
        with pytest.raises(_core.CoreError) as from_limits:
            limits.check_prompt(np.asarray(bad, dtype=np.int32))
        with pytest.raises(_core.CoreError) as from_core:
            d.sched.add_request(np.asarray(bad, dtype=np.int32))
        assert str(from_limits.value) == str(from_core.value)
    with pytest.raises(_core.CoreError, match=r"stop_token_ids: token id 2147483648 is out"):
        limits.check_token_ids("stop_token_ids: token id", np.asarray([1, 2**31]))
    assert limits.fit_max_new_tokens(10, 5, False) == 5
    assert limits.fit_max_new_tokens(10, 50, True) == 5
    with pytest.raises(_core.CoreError, match="maximum context length of 16 tokens"):
        limits.fit_max_new_tokens(10, 6, False)


def test_cancel_plan_releases_the_failed_step() -> None:
    d = Driver()
    a = d.sched.add_request([1, 2, 3, 4], max_new_tokens=4)
    plan = d.sched.schedule()
    assert list(plan.req_ids) == [a]
    assert list(d.sched.cancel_plan()) == [a]
    assert d.sched.idle() and not d.sched.has_request(a)
    d.sched.check_integrity()
    assert d.sched.stats().num_used_tokens == 0
