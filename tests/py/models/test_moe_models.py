"""Mixture-of-experts models (Qwen2-MoE, Qwen3-MoE) against transformers on tiny random
checkpoints (fp32): greedy tokens through ModelRunner and the real scheduler, the
expert-distribution recorder's counts against transformers' own routing decisions, checkpoint
formats (per-expert and stacked expert tensors), and the grouped expert compute against the
per-expert reference loop."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from model_test_utils import (
    NEW_TOKENS,
    PROMPTS,
    VOCAB,
    GreedyDriver,
    hf_greedy,
    hf_model,
    save_tiny_model,
)
from sglang.srt.layers.moe import (
    FusedMoE,
    fused_experts,
    moe_forward_per_expert_loop,
    select_experts,
)
from sglang.srt.layers.moe.fused_moe import METHODS
from sglang.srt.model_executor.model_runner import ModelRunner

MOE_ARCHS = ["qwen2_moe", "qwen3_moe"]
TOP_K = 2


def _moe_configs() -> dict[str, Any]:
    from transformers import Qwen2MoeConfig, Qwen3MoeConfig

    common = {
        "hidden_size": 64,
        "intermediate_size": 96,  # the dense layers' MLP
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 1024,
        "num_experts": 8,
        "num_experts_per_tok": TOP_K,
        "moe_intermediate_size": 32,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    return {
        # layer 1 dense (mlp_only_layers), a shared expert, top-k weights not renormalised
        "qwen2_moe": Qwen2MoeConfig(
            **common, num_hidden_layers=3, shared_expert_intermediate_size=48,
            mlp_only_layers=[1], norm_topk_prob=False,
        ),
        "qwen3_moe": Qwen3MoeConfig(**common, num_hidden_layers=2, head_dim=32,
                                    norm_topk_prob=True),
    }  # fmt: skip


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_moe")
    return {
        name: save_tiny_model(cfg, root / name, seed=20 + i)
        for i, (name, cfg) in enumerate(_moe_configs().items())
    }


@pytest.fixture(scope="module")
def hf_moe(moe_models: dict[str, Path]) -> dict[str, Any]:
    return {name: hf_model(folder) for name, folder in moe_models.items()}


@pytest.fixture(scope="module")
def moe_reference(hf_moe: dict[str, Any]) -> dict[str, list[list[int]]]:
    return {name: [hf_greedy(m, p, NEW_TOKENS) for p in PROMPTS] for name, m in hf_moe.items()}


@pytest.mark.parametrize("backend", [None, "torch_native"])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_greedy_matches_transformers(
    arch: str,
    backend: str | None,
    moe_models: dict[str, Path],
    moe_reference: dict[str, list[list[int]]],
) -> None:
    runner = ModelRunner(str(moe_models[arch]), dtype="float32", attention_backend=backend)
    assert runner.attention_backend == (backend or "cpu")
    assert runner.model.model.fused_decode is None  # the C++ decode runner composes dense MLPs
    outputs = GreedyDriver(runner).generate(PROMPTS, NEW_TOKENS)
    assert outputs == moe_reference[arch]
    assert len({t for out in outputs for t in out}) > 8  # not a degenerate model


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_greedy_with_onednn_packed_experts(
    arch: str,
    moe_models: dict[str, Path],
    moe_reference: dict[str, list[list[int]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The experts packed for oneDNN (chosen at load where it is faster; forced here, the tiny
    experts run faster dense)."""
    from sglang.srt.layers.moe import fused_moe

    monkeypatch.setattr(fused_moe, "packing_wins", lambda *args, **kwargs: True)
    runner = ModelRunner(str(moe_models[arch]), dtype="float32")
    experts = [m for m in runner.model.modules() if isinstance(m, FusedMoE)]
    assert experts and all(m.packed is not None for m in experts)
    assert GreedyDriver(runner).generate(PROMPTS, NEW_TOKENS) == moe_reference[arch]


def test_torch_compile_keeps_moe_blocks_eager(
    moe_models: dict[str, Path], moe_reference: dict[str, list[list[int]]]
) -> None:
    runner = ModelRunner(str(moe_models["qwen2_moe"]), dtype="float32",
                         enable_torch_compile=True, torch_compile_max_bs=4)  # fmt: skip
    layers = runner.model.model.layers
    assert [layer.mlp_compilable for layer in layers] == [False, True, False]  # layer 1 dense
    assert all(layer.compiled_mlp is not None for layer in layers)
    outputs = GreedyDriver(runner).generate(PROMPTS[:2], NEW_TOKENS)
    assert outputs == moe_reference["qwen2_moe"][:2]


# ---- expert-distribution recorder ------------------------------------------------------------
def _hf_routing(model: Any, prompt: list[int]) -> dict[int, torch.Tensor]:
    """transformers' selected experts [len(prompt), top_k] per MoE layer, from hooks on the
    routers (``mlp.gate``: (logits, weights, indices) in transformers 5, logits before)."""
    picked: dict[int, torch.Tensor] = {}
    hooks = []
    for layer_id, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None:
            continue

        def hook(_mod: Any, _inp: Any, out: Any, layer_id: int = layer_id) -> None:
            if isinstance(out, tuple):
                picked[layer_id] = out[2]
            else:
                picked[layer_id] = torch.softmax(out.float(), -1).topk(TOP_K, -1).indices

        hooks.append(gate.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(torch.tensor([prompt]))
    finally:
        for h in hooks:
            h.remove()
    return picked


@pytest.mark.parametrize("mode", ["stat", "per_pass", "per_token"])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_recorder_counts_match_transformers_routing(
    arch: str,
    mode: str,
    moe_models: dict[str, Path],
    hf_moe: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", str(tmp_path))
    prompt = PROMPTS[2]
    runner = ModelRunner(str(moe_models[arch]), dtype="float32",
                         expert_distribution_recorder_mode=mode,
                         expert_distribution_recorder_buffer_size=4)  # fmt: skip
    layout = runner.model.moe_layout()
    cfg = _moe_configs()[arch]
    assert (layout.num_layers, layout.num_experts, layout.top_k) == (
        cfg.num_hidden_layers, 8, TOP_K)  # fmt: skip
    runner.recorder.start_record()
    GreedyDriver(runner).generate([prompt], 1)  # one forward pass: the prompt's prefill
    runner.recorder.stop_record()
    path = runner.recorder.dump_record()
    assert path.parent == tmp_path
    dump = torch.load(path, weights_only=False)

    routing = _hf_routing(hf_moe[arch], prompt)
    sparse = [i for i in range(layout.num_layers) if i not in cfg.mlp_only_layers]
    assert sorted(routing) == sparse
    expected = torch.zeros(layout.num_layers, layout.num_experts, dtype=torch.int32)
    for layer_id, ids in routing.items():
        expected[layer_id] = torch.bincount(ids.reshape(-1), minlength=layout.num_experts)
    assert expected.sum() == len(sparse) * len(prompt) * TOP_K

    if mode == "stat":
        counts = dump["logical_count"]
        assert counts.shape == (4, layout.num_layers, layout.num_experts)
        assert torch.equal(counts[0], expected)
        assert not counts[1:].any()
        return
    (record,) = dump["records"]
    assert torch.equal(record["global_physical_count"], expected)
    if mode == "per_token":
        assert record["input_ids"] == prompt
        topk = record["topk_ids_of_layer"]
        assert topk.shape == (layout.num_layers, len(prompt), TOP_K)
        for layer_id in range(layout.num_layers):
            if layer_id not in routing:  # a dense layer reports nothing
                assert (topk[layer_id] == -1).all()
                continue
            ours = [set(row) for row in topk[layer_id].tolist()]
            assert ours == [set(row) for row in routing[layer_id].tolist()]


def test_recorder_mode_on_a_dense_model_is_an_error(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="mixture-of-experts"):
        ModelRunner(str(tiny_models["qwen2"]), dtype="float32",
                    expert_distribution_recorder_mode="stat")  # fmt: skip


# ---- checkpoints -----------------------------------------------------------------------------
def test_stacked_expert_tensors_load_the_same_weights(
    moe_models: dict[str, Path], hf_moe: dict[str, Any], tmp_path: Path
) -> None:
    """transformers' in-memory layout (``experts.gate_up_proj`` [E, 2I, H], ``down_proj``
    [E, H, I]) saved as is loads to the same parameters as the per-expert checkpoint."""
    from safetensors.torch import save_file

    folder = tmp_path / "stacked"
    folder.mkdir()
    shutil.copy(moe_models["qwen2_moe"] / "config.json", folder)
    state = {k: v.contiguous() for k, v in hf_moe["qwen2_moe"].state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_file(state, str(folder / "model.safetensors"))
    stacked = _weights(ModelRunner(str(folder), dtype="float32").model)
    per_expert = _weights(ModelRunner(str(moe_models["qwen2_moe"]), dtype="float32").model)
    assert stacked.keys() == per_expert.keys()
    assert "model.layers.2.mlp.experts.w2" in per_expert
    for name, tensor in per_expert.items():
        assert torch.equal(stacked[name], tensor), name


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters, the experts' stacks in plain layout (packed for oneDNN or not)."""
    out = {k: v for k, v in model.state_dict().items() if ".experts." not in k}
    for name, module in model.named_modules():
        if isinstance(module, FusedMoE):
            out[f"{name}.w13"], out[f"{name}.w2"] = module.dense_weights()
    return out


def test_missing_expert_tensor_is_named(moe_models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "incomplete"
    folder.mkdir()
    shutil.copy(moe_models["qwen3_moe"] / "config.json", folder)
    state = load_file(str(moe_models["qwen3_moe"] / "model.safetensors"))
    del state["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 1 tensors: model\.layers\.1\.mlp\.experts\.w13:5"):
        ModelRunner(str(folder), dtype="float32")


# ---- router and grouped compute --------------------------------------------------------------
@pytest.mark.parametrize("renormalize", [False, True])
def test_select_experts_matches_transformers_router(renormalize: bool) -> None:
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

    cfg = Qwen2MoeConfig(hidden_size=64, num_experts=8, num_experts_per_tok=3,
                         norm_topk_prob=renormalize)  # fmt: skip
    router = Qwen2MoeTopKRouter(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.weight.copy_(torch.randn(8, 64, generator=gen))
        x = torch.randn(16, 64, generator=gen)
        logits, weights, ids = router(x)
    ours_w, ours_ids = select_experts(logits, 3, renormalize)
    assert torch.equal(ours_ids, ids)
    torch.testing.assert_close(ours_w, weights, atol=1e-6, rtol=0)


def _experts(e: int, h: int, i: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(e, 2 * i, h, generator=gen) * 0.1, torch.randn(e, h, i, generator=gen) * 0.1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("num_tokens", [1, 2, 5, 16, 64])
def test_grouped_compute_matches_per_expert_loop(method: str, num_tokens: int) -> None:
    w13, w2 = _experts(8, 64, 32, seed=num_tokens)
    gen = torch.Generator().manual_seed(100 + num_tokens)
    x = torch.randn(num_tokens, 64, generator=gen)
    weights, ids = select_experts(torch.randn(num_tokens, 8, generator=gen), 3, True)
    ref = moe_forward_per_expert_loop(x, w13, w2, weights, ids)
    out = fused_experts(x, w13, w2, weights, ids, method=method)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_grouped_compute_skewed_and_empty_routing(method: str) -> None:
    w13, w2 = _experts(6, 32, 16, seed=1)
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[4, 1]] * 8 + [[1, 4]])  # experts 0, 2, 3, 5 get no rows
    weights = torch.rand(9, 2, generator=torch.Generator().manual_seed(3))
    ref = moe_forward_per_expert_loop(x, w13, w2, weights, ids)
    torch.testing.assert_close(fused_experts(x, w13, w2, weights, ids, method=method), ref,
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    empty = fused_experts(x[:0], w13, w2, weights[:0], ids[:0], method=method)
    assert empty.shape == (0, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_experts_match_dense(dtype: torch.dtype) -> None:
    """FusedMoE with its weights packed for oneDNN (forced on) against the dense compute."""
    w13, w2 = (w.to(dtype) for w in _experts(8, 64, 32, seed=7))
    moe = FusedMoE(8, 64, 32, dtype=dtype)
    moe.load_fused_weight("gate_up_proj", w13)
    moe.load_fused_weight("down_proj", w2)
    moe.finalize_weights(pack=True)
    assert moe.packed is not None and moe.w13.numel() == 0
    dense13, dense2 = moe.dense_weights()
    assert torch.equal(dense13, w13) and torch.equal(dense2, w2)
    gen = torch.Generator().manual_seed(8)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.inference_mode():
        for t in (1, 3, 40):
            x = torch.randn(t, 64, generator=gen).to(dtype)
            weights, ids = select_experts(torch.randn(t, 8, generator=gen), 2, True)
            ref = fused_experts(x, w13, w2, weights, ids, method="loop")
            torch.testing.assert_close(moe(x, weights, ids), ref, atol=tol, rtol=tol)
        assert moe(x[:0], weights[:0], ids[:0]).shape == (0, 64)


def test_fused_moe_module_bfloat16_close_to_float32() -> None:
    w13, w2 = _experts(8, 64, 32, seed=5)
    moe = FusedMoE(8, 64, 32, dtype=torch.bfloat16)
    for e in range(8):
        moe.load_expert_weight(e, "gate", w13[e, :32])
        moe.load_expert_weight(e, "up", w13[e, 32:])
        assert moe.load_expert_weight(e, "down", w2[e]) == f"w2:{e}.down"
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(12, 64, generator=gen)
    weights, ids = select_experts(torch.randn(12, 8, generator=gen), 2, False)
    with torch.inference_mode():
        out = moe(x.bfloat16(), weights, ids)
    assert out.dtype == torch.bfloat16
    ref = moe_forward_per_expert_loop(x, w13, w2, weights, ids)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="checkpoint shape"):
        moe.load_expert_weight(0, "down", w13[0])


def test_all_experts_threshold_is_measured_and_used() -> None:
    """Small experts: the load-time probe decides up to how many tokens every expert runs on
    every token; FusedMoE follows it and stays equal to the routed compute either way."""
    from sglang.srt.layers.moe.fused_moe import ALL_EXPERTS_PROBES, all_experts_max_tokens

    w13, w2 = _experts(8, 64, 32, seed=11)
    limit = all_experts_max_tokens(w13, w2, 2)
    assert limit in (0, *ALL_EXPERTS_PROBES)
    assert all_experts_max_tokens(w13.to("meta"), w2.to("meta"), 2) == 0  # not a CPU tensor
    moe = FusedMoE(8, 64, 32, dtype=torch.float32)
    moe.load_fused_weight("gate_up_proj", w13)
    moe.load_fused_weight("down_proj", w2)
    moe.top_k = 2
    moe.finalize_weights(pack=False)
    assert moe.all_experts_max_tokens == limit
    moe.all_experts_max_tokens = 4  # forced: both sides of the threshold
    gen = torch.Generator().manual_seed(12)
    with torch.inference_mode():
        for t in (1, 4, 5, 30):
            x = torch.randn(t, 64, generator=gen)
            weights, ids = select_experts(torch.randn(t, 8, generator=gen), 2, True)
            ref = moe_forward_per_expert_loop(x, w13, w2, weights, ids)
            torch.testing.assert_close(moe(x, weights, ids), ref, atol=1e-5, rtol=1e-5)


def test_cuda_graphs_only_where_the_experts_need_no_host_sync() -> None:
    """On CUDA only the bfloat16 grouped matmul avoids reading the expert counts on the host;
    the ModelRunner captures graphs only when every MoE layer says it is graph-safe."""
    from types import SimpleNamespace

    def weights(device: str, dtype: torch.dtype) -> SimpleNamespace:
        return SimpleNamespace(device=torch.device(device), is_cuda=device == "cuda",
                               dtype=dtype)  # fmt: skip

    def safe(device: str, dtype: torch.dtype, method: str = "auto") -> bool:
        return FusedMoE.graph_safe(SimpleNamespace(w13=weights(device, dtype), method=method))

    assert safe("cuda", torch.bfloat16) is hasattr(torch.nn.functional, "grouped_mm")
    assert not safe("cuda", torch.float16) and not safe("cuda", torch.float32)
    assert not safe("cuda", torch.bfloat16, method="loop")
    assert safe("cpu", torch.float32) and FusedMoE(4, 8, 4).graph_safe()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_on_cuda_float32_matches_and_bfloat16_graphs_match_eager(
    arch: str, moe_models: dict[str, Path], moe_reference: dict[str, list[list[int]]]
) -> None:
    """On CUDA: float32 experts (eager: their grouped compute reads the expert counts on the
    host) give transformers' tokens; bfloat16 experts run inside the decode CUDA graphs and give
    the same tokens as bfloat16 eager."""

    def runner(dtype: str, graphs: bool) -> ModelRunner:
        return ModelRunner(str(moe_models[arch]), device="cuda", dtype=dtype,
                           attention_backend="triton", disable_cuda_graph=not graphs,
                           cuda_graph_max_bs=8)  # fmt: skip

    fp32 = runner("float32", True)
    assert GreedyDriver(fp32).generate(PROMPTS, NEW_TOKENS) == moe_reference[arch]
    assert fp32.graph_runner is None  # not graph-safe in float32
    outputs = {}
    for graphs in (False, True):
        bf16 = runner("bfloat16", graphs)
        outputs[graphs] = GreedyDriver(bf16).generate(PROMPTS, NEW_TOKENS)
        assert (bf16.graph_runner is not None) == graphs
    assert outputs[True] == outputs[False]
