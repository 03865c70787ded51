"""LoRA building blocks (issue 15) against ``peft`` on a tiny random Llama: a PEFT adapter folder
read back (config, scaling, every target module's A/B), the per-row delta of a batch mixing three
adapters and the base model equal to each peft layer's own delta, the slot pool's LRU eviction
and pinning, and the adapters this server refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sglang.srt.lora.adapter import TARGETS, LoraAdapter, LoraError
from sglang.srt.lora.ops import lora_delta
from sglang.srt.lora.pool import LoraPool, PoolFull

peft = pytest.importorskip("peft")  # a test dependency ([test] extra)

HIDDEN, INTER, LAYERS = 32, 48, 2


def _base() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=INTER,
                         num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _adapter(folder: Path, seed: int, rank: int, targets: list[str], **kw: Any) -> Any:
    """A random PEFT adapter (non-zero B) saved into ``folder``; returns the peft model."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                             init_lora_weights=False, **kw)  # fmt: skip
    model = peft.get_peft_model(_base(), config).eval()
    model.save_pretrained(folder)
    return model


def _shape(module: str) -> tuple[int, int]:
    kv = HIDDEN // 2  # 2 of 4 heads
    return {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, kv), "v_proj": (HIDDEN, kv),
            "o_proj": (HIDDEN, HIDDEN), "gate_proj": (HIDDEN, INTER),
            "up_proj": (HIDDEN, INTER), "down_proj": (INTER, HIDDEN)}[module]  # fmt: skip


def _peft_delta(model: Any, layer: int, module: str, x: torch.Tensor) -> torch.Tensor:
    block = model.base_model.model.model.layers[layer]
    mod = getattr(block.self_attn if module in TARGETS[:4] else block.mlp, module)
    with torch.no_grad():
        return mod(x) - mod.base_layer(x)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("adapters")
    specs = {"all": (4, list(TARGETS), {}), "attn": (2, ["q_proj", "v_proj"], {}),
             "mlp": (8, ["gate_proj", "down_proj"], {"use_rslora": True})}  # fmt: skip
    return {name: (root / name, _adapter(root / name, i + 1, rank, targets, **kw))
            for i, (name, (rank, targets, kw)) in enumerate(specs.items())}  # fmt: skip


def test_adapter_folder_is_read_back(adapters: dict[str, tuple[Path, Any]]) -> None:
    folder = adapters["all"][0]
    adapter = LoraAdapter.load("all", str(folder), max_rank=8)
    assert adapter.config.rank == 4 and adapter.config.targets == tuple(sorted(TARGETS))
    assert adapter.config.scaling == pytest.approx(2.0)
    assert set(adapter.weights) == {(layer, m) for layer in range(LAYERS) for m in TARGETS}
    adapter.check_base(LAYERS, _shape)
    mlp = LoraAdapter.load("mlp", str(adapters["mlp"][0]))
    assert mlp.config.use_rslora and mlp.config.scaling == pytest.approx(16 / 8**0.5)


def test_mixed_batch_delta_equals_peft(adapters: dict[str, tuple[Path, Any]]) -> None:
    loaded = {n: LoraAdapter.load(n, str(f)) for n, (f, _) in adapters.items()}
    shapes = {m: _shape(m) for m in TARGETS}
    pool = LoraPool(num_slots=3, max_rank=8, num_layers=LAYERS, shapes=shapes)
    slots = {n: pool.acquire(a) for n, a in loaded.items()}
    gen = torch.Generator().manual_seed(5)
    names = ["all", None, "mlp", "attn", "all", None, "attn", "mlp", "mlp", "all"]  # interleaved
    row_slots = torch.tensor([-1 if n is None else slots[n] for n in names])
    for layer in range(LAYERS):
        for module in TARGETS:
            x = torch.randn(len(names), shapes[module][0], generator=gen)
            got = lora_delta(x, row_slots, pool.A[module][layer], pool.B[module][layer],
                             pool.scaling)  # fmt: skip
            for t, name in enumerate(names):
                want = torch.zeros(shapes[module][1])
                if name is not None and module in loaded[name].config.targets:
                    want = _peft_delta(adapters[name][1], layer, module, x[t:t + 1])[0]
                torch.testing.assert_close(got[t], want, atol=1e-5, rtol=1e-5)
    pool.check_integrity()


def test_pool_evicts_the_least_recently_used_unpinned_adapter(
    adapters: dict[str, tuple[Path, Any]]
) -> None:
    loaded = {n: LoraAdapter.load(n, str(f)) for n, (f, _) in adapters.items()}
    pool = LoraPool(num_slots=2, max_rank=8, num_layers=LAYERS,
                    shapes={m: _shape(m) for m in TARGETS})  # fmt: skip
    a = pool.acquire(loaded["all"])
    b = pool.acquire(loaded["attn"])
    with pytest.raises(PoolFull):
        pool.acquire(loaded["mlp"])  # both pinned
    pool.release("all")
    pool.release("attn")
    assert pool.acquire(loaded["attn"]) == b  # resident: no copy, now most recently used
    assert pool.acquire(loaded["mlp"]) == a  # "all" was the least recently used
    assert set(pool.slot_of) == {"attn", "mlp"} and pool.loads == 3
    # the rank-8 rsLoRA adapter fully replaced the rank-4 one in that slot
    x = torch.randn(1, HIDDEN)
    got = lora_delta(x, torch.tensor([a]), pool.A["q_proj"][0], pool.B["q_proj"][0],
                     pool.scaling)  # fmt: skip
    assert torch.count_nonzero(got) == 0  # "mlp" does not adapt q_proj
    with pytest.raises(ValueError, match="in use"):
        pool.evict("mlp")
    pool.release("mlp")
    pool.evict("mlp")
    with pytest.raises(ValueError, match="not pinned"):
        pool.release("mlp")
    pool.check_integrity()


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("changes,message", [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "trains biases"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"rank_pattern": {"q_proj": 8}}, "per-module ranks"),
    ({"target_modules": ["embed_tokens"]}, "target_modules"),
    ({"target_modules": ".*proj"}, "target_modules"),
    ({"peft_type": "IA3"}, "only LORA"),
    ({"r": 0}, "positive integer"),
])  # fmt: skip
def test_refused_adapters(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    _adapter(tmp_path, 9, 2, ["q_proj"])
    _edit_config(tmp_path, **changes)
    with pytest.raises(LoraError, match=message):
        LoraAdapter.load("x", str(tmp_path))


def test_rank_limit_missing_folder_and_base_mismatch(
    adapters: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    with pytest.raises(LoraError, match="above the server's --max-lora-rank 4"):
        LoraAdapter.load("mlp", str(adapters["mlp"][0]), max_rank=4)
    with pytest.raises(LoraError, match="not a PEFT adapter folder"):
        LoraAdapter.load("none", str(tmp_path / "missing"))
    adapter = LoraAdapter.load("all", str(adapters["all"][0]))
    with pytest.raises(LoraError, match="base model has 1 layers"):
        adapter.check_base(1, _shape)
    with pytest.raises(LoraError, match="another base model"):
        adapter.check_base(LAYERS, lambda m: (HIDDEN + 1, _shape(m)[1]))
