"""Tensor parallelism: tiny random fp32 Llama, Qwen2 (tied embeddings, q/k/v biases), Qwen3
(one KV head, replicated on both ranks; q/k norms), Qwen2-MoE (shared expert, a dense layer)
and Qwen3-MoE sharded over 2 ranks (two spawned processes, gloo, a FileStore rendezvous), each
rank driving its own copy of the real scheduler with the same inputs. Greedy tokens must equal
one rank's exactly and every recorded logprob within 1e-4, through prefix-cache hits, chunked
prefill with pages and retraction. Also: the sharded layers against their full versions (bias
once, vocab padding, KV-head replication), the broadcasts, dummy weights identical where
replicated, and the refusals. A GPU case runs the same over NCCL on two GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from model_test_utils import NEW_TOKENS, PROMPTS, VOCAB, GreedyDriver, save_tiny_model
from sglang.srt.distributed.parallel_state import (
    TPGroup,
    destroy_tp_group,
    init_tp_group,
    split_heads,
    tp_group_scope,
)
from sglang.srt.model_executor.model_runner import ModelRunner

TP = 2
# llama_sdpa: the llama model on the torch_native attention backend (the others on the default,
# the fused C++ CPU kernels).
ARCHS = ["llama", "llama_sdpa", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"]
SCENARIOS = {
    # One prompt first, then the others: their shared 24-token prefix comes from the cache.
    "prefix_cache": {},
    "chunked_prefill": {"chunked_prefill_size": 8, "page_size": 4},
    "retraction": {
        "max_total_tokens": 96,
        "context_length": 96,
        "init_new_token_ratio": 0.0,
        "min_new_token_ratio": 0.0,
    },
}


def run_scenario(runner: ModelRunner, scenario: str) -> dict[str, Any]:
    """Greedy tokens and the logits of every computed row, per prompt, plus what the
    scheduler did (cache hits, retractions)."""
    driver = GreedyDriver(runner, overrides=SCENARIOS[scenario], record_logits=True)
    new_tokens = NEW_TOKENS if scenario == "retraction" else 8
    if scenario == "prefix_cache":
        rids = [driver.add(PROMPTS[0], new_tokens)]
        driver.run()
        rids += [driver.add(p, new_tokens) for p in PROMPTS[1:]]
    else:
        rids = [driver.add(p, new_tokens) for p in PROMPTS]
    driver.run()
    return {
        "tokens": [driver.outputs[r] for r in rids],
        "logits": [torch.cat(driver.logits[r]) for r in rids],
        "cache_hits": driver.sched.stats().cache_hit_tokens,
        "retracted": driver.retracted,
    }


def _moe_configs() -> tuple[Any, Any]:
    from transformers import Qwen2MoeConfig, Qwen3MoeConfig

    common: dict[str, Any] = {
        "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 1024,
        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }  # fmt: skip
    return (
        Qwen2MoeConfig(**common, shared_expert_intermediate_size=48, mlp_only_layers=[1],
                       norm_topk_prob=False, num_hidden_layers=3),
        Qwen3MoeConfig(**common, head_dim=32, norm_topk_prob=True, num_hidden_layers=2),
    )  # fmt: skip


@pytest.fixture(scope="module")
def folders(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, str]:  # fmt: skip
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tp_moe")
    qwen2_moe, qwen3_moe = _moe_configs()
    moe = save_tiny_model(qwen2_moe, root / "m", seed=31)
    # The same weights with stacked expert tensors (transformers' in-memory layout).
    stacked = root / "stacked"
    stacked.mkdir()
    (stacked / "config.json").write_text((moe / "config.json").read_text())
    state = AutoModelForCausalLM.from_pretrained(moe, dtype=torch.float32).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(stacked / "model.safetensors"))
    return {"llama": str(tiny_models["llama"]), "llama_sdpa": str(tiny_models["llama"]),
            "qwen2": str(tiny_models["qwen2"]), "qwen3": str(tiny_models["qwen3"]),
            "qwen2_moe": str(moe), "qwen2_moe_stacked": str(stacked),
            "qwen3_moe": str(save_tiny_model(qwen3_moe, root / "q3", seed=32))}  # fmt: skip


def _runner(folder: str, arch: str, device: str = "cpu", **kw: Any) -> ModelRunner:
    backend = "torch_native" if arch.endswith("_sdpa") else None
    return ModelRunner(folder, dtype="float32", device=device, attention_backend=backend, **kw)


def _scenarios(runner: ModelRunner) -> dict[str, Any]:
    out: dict[str, Any] = {s: run_scenario(runner, s) for s in SCENARIOS}
    out["kv_heads"] = runner.kv_pool.num_kv_heads  # type: ignore[union-attr]
    return out


def _experts(runner: ModelRunner) -> list[torch.Tensor]:
    from sglang.srt.layers.moe import FusedMoE

    moes = [m for m in runner.model.modules() if isinstance(m, FusedMoE)]
    return [w for m in moes for w in m.dense_weights()]


# ---- the sharded side: one process per rank ----------------------------------------------------


def _layer_errors(group: TPGroup) -> dict[str, float]:
    """Max |sharded - full| of each parallel layer on seeded inputs (same on every rank)."""
    from sglang.srt.layers.parallel_linear import (
        ColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )
    from sglang.srt.layers.vocab_embedding import VocabParallelEmbedding

    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    errors = {}
    with tp_group_scope(group), torch.no_grad():
        # Row-parallel with a bias (added once), fed by a column-parallel gate/up.
        w_gu, b_gu, w_d, b_d, x = rand(2 * 12, 8), rand(2 * 12), rand(8, 12), rand(8), rand(5, 8)
        col = ColumnParallelLinear(8, 24, True, shards={"gate": 12, "up": 12})
        for shard, rows in (("gate", slice(0, 12)), ("up", slice(12, 24))):
            col.load_shard(col.weight, shard, w_gu[rows])
            col.load_shard(col.bias, shard, b_gu[rows])
        row = RowParallelLinear(12, 8, True)  # fed the gate half
        row.load_shard(row.weight, None, w_d)
        row.load_shard(row.bias, None, b_d)
        gate = col(x)[:, : col.out_features // 2]
        ref = F.linear(F.linear(x, w_gu, b_gu)[:, :12], w_d, b_d)
        errors["column_row"] = (row(gate) - ref).abs().max().item()
        # q/k/v with one KV head (replicated on every rank) and with two.
        for kv in (1, 2):
            w = rand((4 + 2 * kv) * 4, 8)
            qkv = QKVParallelLinear(8, 4, 4, kv)
            for shard, (start, n) in zip("qkv", ((0, 16), (16, 4 * kv), (16 + 4 * kv, 4 * kv))):
                qkv.load_shard(qkv.weight, shard, w[start : start + n])
            full = F.linear(x, w)
            q, k, v = full.split([16, 4 * kv, 4 * kv], dim=1)
            heads, kvh = qkv.num_heads, qkv.num_kv_heads
            first_kv = group.rank * kv // group.size
            want = torch.cat([q[:, group.rank * heads * 4 : (group.rank + 1) * heads * 4],
                              k[:, first_kv * 4 : (first_kv + kvh) * 4],
                              v[:, first_kv * 4 : (first_kv + kvh) * 4]], 1)  # fmt: skip
            errors[f"qkv_{kv}kv"] = (qkv(x) - want).abs().max().item()
        # A vocabulary not divisible by the ranks (padding rows), looked up and projected.
        table, ids = rand(11, 8), torch.tensor([0, 5, 6, 10, 3])
        emb = VocabParallelEmbedding(11, 8)
        emb.weight.copy_(emb.checkpoint_slice(emb.weight, table))
        errors["embedding"] = (emb(ids) - table[ids]).abs().max().item()
        errors["tied_head"] = (emb.project(x) - x @ table.T).abs().max().item()
    return errors


def _cpu_checks(group: TPGroup, folders: dict[str, str], tp: dict[str, Any]) -> dict[str, Any]:
    """The sharded layers, the stacked expert checkpoint and dummy weights (gloo)."""
    results: dict[str, Any] = {"layers": _layer_errors(group)}
    stacked = _experts(_runner(folders["qwen2_moe_stacked"], "moe", **tp))
    per_expert = _experts(_runner(folders["qwen2_moe"], "moe", **tp))
    results["stacked_experts_equal"] = len(stacked) == len(per_expert) == 4 and all(
        torch.equal(a, b) for a, b in zip(stacked, per_expert))  # fmt: skip
    dummy = ModelRunner(folders["qwen2_moe"], dtype="float32", device="cpu", load_format="dummy",
                        **tp)  # fmt: skip
    router = dummy.model.model.layers[0].mlp.gate.weight.detach()
    gathered = group.all_gather(router.contiguous(), dim=0).chunk(group.size)
    results["dummy_router_equal"] = all(torch.equal(g, router) for g in gathered)
    results["dummy_tokens"] = GreedyDriver(dummy).generate(PROMPTS[:2], 4)
    # What the engine wiring will use to hand rank 0's plan to the others.
    mine = {"rank": group.rank, "ids": [1, 2]}
    results["broadcast_object"] = group.broadcast_object(mine if group.rank == 0 else None)
    results["broadcast"] = group.broadcast(torch.full((3,), float(group.rank + 7)), src=1).tolist()
    group.barrier()
    return results


def _tp_worker(rank: int, size: int, init_file: str, folders: dict[str, str], out: str,
               device: str) -> None:  # fmt: skip
    """One rank: every model's scenarios (and on CPU the layer checks), saved for the test."""
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if device == "cuda" else "gloo"
    group = init_tp_group(rank, size, f"file://{init_file}", backend, timeout_s=120)
    try:
        tp = {"tp_rank": rank, "tp_size": size, "tp_group": group}
        results: dict[str, Any] = {}
        for arch in ARCHS:
            runner = _runner(folders[arch], arch, device, **tp)
            assert runner.model.model.fused_decode is None and not runner.use_cuda_graph
            results[arch] = _scenarios(runner)
        if device == "cpu":
            results.update(_cpu_checks(group, folders, tp))
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        destroy_tp_group()


def _spawn(folders: dict[str, str], out: Path, device: str) -> list[dict[str, Any]]:
    """Each rank's results of a TP=2 run in two new processes."""
    import torch.multiprocessing as mp

    args = (TP, str(out / "store"), folders, str(out), device)
    mp.spawn(_tp_worker, args=args, nprocs=TP, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(TP)]


@pytest.fixture(scope="module")
def sharded(folders: dict[str, str], tmp_path_factory: pytest.TempPathFactory
            ) -> list[dict[str, Any]]:  # fmt: skip
    return _spawn(folders, tmp_path_factory.mktemp("tp_run"), "cpu")


@pytest.fixture(scope="module")
def single(folders: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The same scenarios on one rank."""
    return {arch: _scenarios(_runner(folders[arch], arch)) for arch in ARCHS}


def _assert_matches(ranks: list[dict[str, Any]], ref: dict[str, Any], scenario: str) -> None:
    ours = ranks[0]
    assert ours["tokens"] == ref["tokens"]
    assert ours["cache_hits"] == ref["cache_hits"] and ours["retracted"] == ref["retracted"]
    if scenario == "prefix_cache":
        assert ref["cache_hits"] > 0
    if scenario == "retraction":
        assert ref["retracted"] > 0
    for mine, theirs in zip(ours["logits"], ref["logits"]):
        assert mine.shape == theirs.shape == (mine.shape[0], VOCAB)
        torch.testing.assert_close(
            torch.log_softmax(mine, -1), torch.log_softmax(theirs, -1), atol=1e-4, rtol=0
        )
    # Every rank got the same (all-gathered) logits, so the same tokens and plans.
    for other in ranks[1:]:
        assert other["tokens"] == ours["tokens"]
        assert all(torch.equal(a, b) for a, b in zip(other["logits"], ours["logits"]))


# ---- the checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("arch", ARCHS)
def test_tp2_matches_one_rank(
    arch: str, scenario: str, sharded: list[dict[str, Any]], single: dict[str, dict[str, Any]]
) -> None:
    _assert_matches([r[arch][scenario] for r in sharded], single[arch][scenario], scenario)


def test_each_rank_holds_its_kv_heads(sharded: list[dict[str, Any]]) -> None:
    # llama / qwen2 / MoE: 2 KV heads -> 1 per rank; qwen3: its 1 KV head on both ranks.
    assert [sharded[r][a]["kv_heads"] for r in range(TP) for a in ARCHS] == [1] * 12


def test_stacked_expert_tensors_load_the_same_shards(sharded: list[dict[str, Any]]) -> None:
    assert sharded[0]["stacked_experts_equal"] and sharded[1]["stacked_experts_equal"]


def test_sharded_layers_match_full_layers(sharded: list[dict[str, Any]]) -> None:
    for rank in range(TP):
        errors = sharded[rank]["layers"]
        assert set(errors) == {"column_row", "qkv_1kv", "qkv_2kv", "embedding", "tied_head"}
        assert max(errors.values()) < 1e-5, errors


def test_broadcasts(sharded: list[dict[str, Any]]) -> None:
    for rank in range(TP):
        assert sharded[rank]["broadcast_object"] == {"rank": 0, "ids": [1, 2]}
        assert sharded[rank]["broadcast"] == [8.0, 8.0, 8.0]  # rank 1's


def test_dummy_weights_replicated_where_unsharded(sharded: list[dict[str, Any]]) -> None:
    assert sharded[0]["dummy_router_equal"] and sharded[1]["dummy_router_equal"]
    assert sharded[0]["dummy_tokens"] == sharded[1]["dummy_tokens"]


def test_refusals(folders: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="attention heads .* not divisible by the TP size"):
        split_heads(4, 2, 3)
    with pytest.raises(ValueError, match="KV heads cannot be replicated"):
        split_heads(6, 2, 3)
    assert split_heads(8, 2, 4) == (2, 1) and split_heads(8, 8, 4) == (2, 2)
    # Checked before any collective or weight: a group object is enough.
    three = TPGroup(rank=0, size=3, group=object())
    with pytest.raises(ValueError, match="not divisible by the TP size"):
        ModelRunner(folders["llama"], dtype="float32", tp_size=3, tp_group=three)
    two = TPGroup(rank=0, size=2, group=object())
    with pytest.raises(ValueError, match="w8a16 is not supported"):
        ModelRunner(folders["llama"], dtype="float32", quantization="w8a16", tp_size=2,
                    tp_group=two)  # fmt: skip
    with pytest.raises(ValueError, match="expected 1 of 2"):
        ModelRunner(folders["llama"], dtype="float32", tp_rank=1, tp_size=2, tp_group=two)


@pytest.mark.gpu
def test_tp2_nccl_matches_one_rank(folders: dict[str, str], tmp_path: Path) -> None:
    """The same runs on two GPUs over NCCL (default attention backend: Triton where installed)."""
    if torch.cuda.device_count() < TP:
        pytest.skip(f"needs {TP} CUDA GPUs")
    ranks = _spawn(folders, tmp_path, "cuda")
    for arch in ARCHS:
        ref = _scenarios(_runner(folders[arch], arch, "cuda"))
        for scenario in SCENARIOS:
            _assert_matches([r[arch][scenario] for r in ranks], ref[scenario], scenario)
