"""LoRA under tensor parallelism, without processes: each rank's part of an adapter
(``lora.sharding``) for the column-parallel gate/up, the q/k/v of ``QKVParallelLinear`` (KV heads
split, and one KV head replicated on both ranks) and the row-parallel o/down projections, whose
parts put together give the full delta; the pool's ``place`` and a follower manager mirroring
rank 0's slots; retired adapters kept until dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sglang.srt.distributed.parallel_state import TPGroup, tp_group_scope
from sglang.srt.layers.parallel_linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from sglang.srt.lora.adapter import LoraAdapter, LoraConfig
from sglang.srt.lora.pool import LoraPool
from sglang.srt.lora.sharding import TargetShard, target_shard

TP, HIDDEN, HEAD, RANK = 2, 16, 4, 3


def _on_rank(rank: int, build):  # type: ignore[no-untyped-def]
    """``build()`` as TP rank ``rank`` of 2 (layer constructors run no collective)."""
    with tp_group_scope(TPGroup(rank, TP, group=object())):
        return build()


def _pair(fan_in: int, fan_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, fan_in, generator=gen), torch.randn(fan_out, RANK, generator=gen)


def _delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (x @ a.T) @ b.T


def test_one_rank_keeps_everything() -> None:
    layer = QKVParallelLinear(HIDDEN, HEAD, 4, 2)
    assert target_shard(layer, "k") == TargetShard(HIDDEN, 2 * HEAD)
    row = RowParallelLinear(12, HIDDEN)
    shard = target_shard(row, None)
    assert shard == TargetShard(12, HIDDEN) and shard.local_shape == shard.full_shape
    a, b = _pair(12, HIDDEN, 0)
    assert all(s is t for s, t in zip(shard.split(a, b), (a, b)))


def test_column_parallel_gate_up_slice_b_rows() -> None:
    x = torch.randn(5, HIDDEN)
    for name in ("gate", "up"):
        a, b = _pair(HIDDEN, 24, 1)
        parts = []
        for rank in range(TP):
            layer = _on_rank(rank, lambda: ColumnParallelLinear(
                HIDDEN, 48, shards={"gate": 24, "up": 24}))  # fmt: skip
            shard = target_shard(layer, name)
            assert shard.full_shape == (HIDDEN, 24) and shard.local_shape == (HIDDEN, 12)
            assert shard.out_rows == (12 * rank, 12) and shard.in_cols is None
            a_r, b_r = shard.split(a, b)
            assert torch.equal(a_r, a)  # A whole
            parts.append(_delta(x, a_r, b_r))
        torch.testing.assert_close(torch.cat(parts, 1), _delta(x, a, b))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_qkv_slices_each_of_q_k_v_like_the_weight(kv_heads: int) -> None:
    """q by attention heads; k and v by KV heads, or (one KV head) the same head on both."""
    x = torch.randn(5, HIDDEN)
    sizes = {"q": 4 * HEAD, "k": kv_heads * HEAD, "v": kv_heads * HEAD}
    for seed, (name, full) in enumerate(sizes.items()):
        a, b = _pair(HIDDEN, full, seed)
        want = _delta(x, a, b)
        for rank in range(TP):
            layer = _on_rank(rank, lambda: QKVParallelLinear(HIDDEN, HEAD, 4, kv_heads))
            shard = target_shard(layer, name)
            start, size = layer.checkpoint_rows[name]  # the rows the layer keeps of W
            assert shard.out_rows == (start, size) and shard.full_shape == (HIDDEN, full)
            assert shard.local_shape == (HIDDEN, layer.shard_offsets[name][1])
            if name == "q":
                assert (start, size) == (rank * 2 * HEAD, 2 * HEAD)
            else:  # one KV head each, or the one head replicated
                assert (start, size) == ((rank * HEAD, HEAD) if kv_heads == 2 else (0, HEAD))
            a_r, b_r = shard.split(a, b)
            torch.testing.assert_close(_delta(x, a_r, b_r), want[:, start:start + size])


def test_row_parallel_slices_a_columns_and_partials_sum_to_the_delta() -> None:
    x = torch.randn(5, 12)
    a, b = _pair(12, HIDDEN, 7)
    total = torch.zeros(5, HIDDEN)
    for rank in range(TP):
        layer = _on_rank(rank, lambda: RowParallelLinear(12, HIDDEN, bias=True))
        shard = target_shard(layer, None)
        assert shard.in_cols == layer.checkpoint_cols == (6 * rank, 6)
        assert shard.full_shape == (12, HIDDEN) and shard.local_shape == (6, HIDDEN)
        a_r, b_r = shard.split(a, b)
        assert torch.equal(b_r, b) and a_r.is_contiguous()  # B whole
        total += _delta(x[:, 6 * rank:6 * rank + 6], a_r, b_r)  # what the all-reduce sums
    torch.testing.assert_close(total, _delta(x, a, b))


def test_row_parallel_hook_adds_before_the_reduce_and_bias_once() -> None:
    """Rank 0's forward with a hook: bias (rank 0 only) + partial product + partial delta."""
    layer = _on_rank(0, lambda: RowParallelLinear(12, HIDDEN, bias=True))
    layer.tp = TPGroup(0, TP, group=object())
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    seen = []

    def hook(x: torch.Tensor, y: torch.Tensor) -> None:
        seen.append(y.clone())
        y.add_(1.0)

    layer.lora = hook
    layer.reduce_results = False  # no collective here: the partial output comes back
    x = torch.randn(3, 6)
    out = layer(x)
    base = x @ layer.weight.T + layer.bias
    torch.testing.assert_close(seen[0], base)
    torch.testing.assert_close(out, base + 1.0)


# ---- slots mirrored on a follower -------------------------------------------------------------
def _adapter(name: str, seed: int) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    weights = {(0, "q_proj"): (torch.randn(2, 4, generator=gen), torch.randn(4, 2, generator=gen))}
    return LoraAdapter(name, f"/{name}", LoraConfig(2, 4.0, ("q_proj",)), weights)


def test_pool_place_puts_an_adapter_into_a_given_slot() -> None:
    pool = LoraPool(2, 2, 1, {"q_proj": (4, 4)})
    a, b = _adapter("a", 1), _adapter("b", 2)
    pool.place(a, 10, 1)
    assert dict(pool.slot_of) == {10: 1} and pool.loads == 1
    pool.place(a, 10, 1)  # already there: no copy
    assert pool.loads == 1
    pool.place(b, 11, 1)  # replaces a
    assert dict(pool.slot_of) == {11: 1}
    torch.testing.assert_close(pool.A["q_proj"][0, 1], b.weights[(0, "q_proj")][0])
    pool.place(b, 11, 0)  # moves: the old slot is no longer b's
    assert dict(pool.slot_of) == {11: 0}
    pool.check_integrity()
    with pytest.raises(ValueError, match="not in 0..1"):
        pool.place(a, 10, 2)


def _manager(model: torch.nn.Module):  # type: ignore[no-untyped-def]
    from sglang.srt.lora.manager import LoraManager

    return LoraManager(model, max_loras_per_batch=1, max_lora_rank=4, target_modules=["q_proj"],
                       lora_paths={}, dtype=torch.float32, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    """What ``lora_layers`` reads of a Llama-family model: one layer's fused q/k/v."""
    from sglang.srt.layers.linear import Linear
    from torch import nn

    attn = nn.Module()
    attn.qkv_proj = Linear(4, 8, shards={"q": 4, "k": 2, "v": 2})
    layer = nn.Module()
    layer.self_attn = attn
    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([layer])
    return model


def test_follower_mirrors_rank0_slots_with_eviction(
        tiny_llama: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = _manager(tiny_llama), _manager(tiny_llama)
    adapters = {n: _adapter(n, s) for n, s in (("a", 1), ("b", 2))}
    monkeypatch.setattr(LoraAdapter, "load", lambda name, path, max_rank=None: adapters[name])
    for manager in (leader, follower):
        manager.load("a", "/a")
    follower.load("b", "/b", load_id=leader.load("b", "/b").id)
    rows = np.array([2, 3], dtype=np.int32)
    for names in (["a", None], ["b", "b"], ["a", "a"]):  # one slot: each step evicts
        step = leader.begin(rows, [leader.get(n) if n else None for n in names])
        mirrored = follower.mirror(step.info)
        assert dict(follower.pool.slot_of) == dict(leader.pool.slot_of)
        assert torch.equal(mirrored.indptr, step.indptr)
        assert torch.equal(mirrored.slots, step.slots)
        for pool in (leader.pool, follower.pool):
            torch.testing.assert_close(pool.A["q_proj"][0, 0, :2],
                                       adapters[names[0]].weights[(0, "q_proj")][0])
        leader.end()
        follower.end()
    # Unloaded while requests may still use it: retired (mirrorable) until dropped.
    for manager in (leader, follower):
        served = manager.unload("a")
        assert manager.by_id(served.id) is served
    step = leader.begin(rows[:1], [served])
    follower.mirror(step.info)
    leader.end()
    follower.end()
    for manager in (leader, follower):
        manager.drop_retired([served.id])
        assert not manager.retired and served.id not in manager.pool.slot_of
        manager.check_integrity()


def test_a_load_refused_by_another_rank_is_forgotten_everywhere(
        tiny_llama: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower's side of "load_lora": its own failure is logged (never raised), and when the
    ranks do not all agree the adapter it loaded is discarded."""
    from sglang.srt.managers import tp_worker
    from sglang.srt.managers.tp_worker import StepMessage, follow_lora

    follower = _manager(tiny_llama)
    adapter = _adapter("a", 1)
    monkeypatch.setattr(LoraAdapter, "load", lambda name, path, max_rank=None: adapter)
    group = TPGroup()
    msg = StepMessage("load_lora", lora_name="a", lora_path="/a", lora_ids=(5,))
    monkeypatch.setattr(tp_worker, "agree", lambda group, ok: False)  # another rank failed
    follow_lora(follower, group, msg)
    assert not follower.adapters
    monkeypatch.setattr(tp_worker, "agree", lambda group, ok: ok)
    follow_lora(follower, group, msg)
    assert follower.get("a").id == 5 and follower.next_id == 6  # rank 0's load id
    follow_lora(follower, group, msg)  # a second load of the name fails here: logged, kept
    assert follower.get("a").id == 5
    follow_lora(follower, group, StepMessage("unload_lora", lora_name="a"))
    assert not follower.adapters and set(follower.retired) == {5}
    follow_lora(follower, group, StepMessage("drop_lora", lora_ids=(5,)))
    assert not follower.retired
    follower.check_integrity()
