"""Models whose weights stay quantized (``--quantization gguf`` / ``w8a16``): the layers hold the
blocks, and greedy outputs follow transformers in fp32 on the same (dequantized) weights.

A tiny Llama written as a GGUF file with one format per projection (every kernel format, the
fused q/k/v and gate/up layers mixing formats as llama.cpp's Q4_K_M files do), and a tiny
safetensors Llama quantized to int8 at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from model_test_utils import (
    NEW_TOKENS,
    PROMPTS,
    GreedyDriver,
    hf_greedy,
    save_tiny_model,
    write_llama_gguf,
)
from sglang.srt.layers.linear import Linear
from sglang.srt.model_executor.model_runner import ModelRunner

MIXED = {
    "attn_q.weight": "Q4_K",
    "attn_k.weight": "Q5_K",
    "attn_v.weight": "Q6_K",
    "attn_output.weight": "Q4_0",
    "ffn_gate.weight": "Q4_1",
    "ffn_up.weight": "Q4_1",
    "ffn_down.weight": "Q6_K",
    "token_embd.weight": "Q8_0",
    "output.weight": "Q8_0",
}


def matching_fraction(ours: list[list[int]], ref: list[list[int]]) -> float:
    """Share of positions where the tokens agree, counting each sequence up to its first
    divergence (after a near tie the continuations legitimately differ)."""
    agree = total = 0
    for a, b in zip(ours, ref):
        total += len(b)
        for x, y in zip(a, b):
            if x != y:
                break
            agree += 1
    return agree / total


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A 2-layer Llama with K-quant-sized rows (hidden 256) in the formats of ``MIXED``, and the
    transformers model holding the same dequantized weights."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=512,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    root = tmp_path_factory.mktemp("mixed_gguf")
    folder = save_tiny_model(cfg, root / "hf", seed=11, std=0.05)
    path = root / "mixed.gguf"
    qtypes = {k: gguf.GGMLQuantizationType[v] for k, v in MIXED.items()}
    state = write_llama_gguf(folder, path, qtypes)
    hf = LlamaForCausalLM(cfg)
    hf.load_state_dict(state)
    return path, hf.float().eval()


def test_gguf_weights_stay_in_their_blocks(mixed_gguf: tuple[Path, Any]) -> None:
    path, _ = mixed_gguf
    runner = ModelRunner(str(path))
    assert runner.quantization == "gguf" and runner.dtype == torch.float32
    layer = runner.model.model.layers[0]
    assert layer.self_attn.qkv_proj.quant.formats == ["Q4_K", "Q5_K", "Q6_K"]
    assert layer.self_attn.o_proj.quant.formats == ["Q4_0"]
    assert layer.mlp.gate_up_proj.quant.formats == ["Q4_1"]  # one format: one merged part
    assert layer.mlp.down_proj.quant.formats == ["Q6_K"]
    assert runner.model.model.embed_tokens.quant is not None
    assert runner.model.lm_head.quant.formats == ["Q8_0"]
    # Nothing dense is kept for them.
    assert layer.self_attn.qkv_proj.weight.numel() == 0


def test_gguf_quantized_greedy_follows_transformers(mixed_gguf: tuple[Path, Any]) -> None:
    path, hf = mixed_gguf
    expected = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    quantized_runner = ModelRunner(str(path), dtype="float32")
    quantized = GreedyDriver(quantized_runner).generate(PROMPTS, NEW_TOKENS)
    assert matching_fraction(quantized, expected) >= 0.9
    # The dequantizing path (--quantization none) in float32 is the exact one.
    exact_runner = ModelRunner(str(path), quantization="none", dtype="float32")
    exact = GreedyDriver(exact_runner).generate(PROMPTS, NEW_TOKENS)
    assert exact == expected


def test_quantized_logits_close_to_dequantized(mixed_gguf: tuple[Path, Any]) -> None:
    path, hf = mixed_gguf
    ours = GreedyDriver(ModelRunner(str(path), dtype="float32"), record_logits=True)
    rid = ours.add(PROMPTS[0], 1)
    ours.run()
    logits = ours.logits[rid][0]
    with torch.inference_mode():
        ref = hf(torch.tensor([PROMPTS[0]])).logits[0].float()
    scale = ref.abs().max()
    assert (logits - ref).abs().max() <= 1e-3 * scale


def test_w8a16_quantizes_a_float_checkpoint(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    folder = tiny_models["llama"]
    runner = ModelRunner(str(folder), dtype="float32", quantization="w8a16")
    linears = [m for m in runner.model.modules() if isinstance(m, Linear)]
    quantized = [m for m in linears if m.quant is not None]
    assert quantized and all(m.quant.formats == ["Q8_0"] for m in quantized)
    assert runner.model.lm_head.quant is None  # the LM head stays dense
    # The reference: transformers with every projection but the LM head through a Q8_0 round trip.
    import gguf

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("proj.weight"):
                packed = gguf.quants.quantize(param.numpy(), q8)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(packed, q8)))
    expected = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    ours = GreedyDriver(runner).generate(PROMPTS, NEW_TOKENS)
    assert matching_fraction(ours, expected) >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantization": "gguf"}, "needs a GGUF checkpoint"),
        ({"quantization": "int3"}, "Unknown quantization"),
    ],
)
def test_bad_quantization_is_a_clear_error(
    tiny_models: dict[str, Path], kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ModelRunner(str(tiny_models["llama"]), **kwargs)


def test_w8a16_on_a_gguf_file_is_refused(mixed_gguf: tuple[Path, Any]) -> None:
    with pytest.raises(ValueError, match="already quantized"):
        ModelRunner(str(mixed_gguf[0]), quantization="w8a16")


def test_fused_decode_layers_equal_the_python_layers(tiny_models: dict[str, Path]) -> None:
    """A decode step's layers in one C++ call run the same kernels as the Python layers: the
    logits are bit-identical, over several steps and a batch of requests."""
    runner = ModelRunner(str(tiny_models["llama"]), dtype="float32", quantization="w8a16")
    fused = runner.model.model.fused_decode
    assert fused is not None and fused.supported

    def run(with_fused: bool) -> tuple[list[list[int]], dict[int, list[torch.Tensor]]]:
        runner.model.model.fused_decode = fused if with_fused else None
        driver = GreedyDriver(runner, record_logits=True)
        outs = driver.generate(PROMPTS, 8)
        return outs, driver.logits

    calls = []
    original = fused.run
    fused.run = lambda *a: calls.append(1) or original(*a)  # type: ignore[method-assign]
    tokens_fused, logits_fused = run(True)
    assert len(calls) == 7  # every decode step went through it
    tokens_python, logits_python = run(False)
    assert tokens_fused == tokens_python
    for rid, steps in logits_fused.items():
        for a, b in zip(steps, logits_python[rid]):
            assert torch.equal(a, b)


def test_fused_decode_layers_only_take_what_they_compose(
    tiny_models: dict[str, Path], mixed_gguf: tuple[Path, Any]
) -> None:
    # Dense weights, mixed formats in one layer, per-head q/k norms: the Python layers run.
    assert ModelRunner(str(tiny_models["llama"]), dtype="float32").model.model.fused_decode is None
    assert ModelRunner(str(mixed_gguf[0])).model.model.fused_decode is None
    qwen3 = ModelRunner(str(tiny_models["qwen3"]), dtype="float32", quantization="w8a16")
    assert qwen3.model.model.fused_decode is None
    native = ModelRunner(
        str(tiny_models["llama"]), dtype="float32", quantization="w8a16",
        attention_backend="torch_native",
    )  # fmt: skip
    assert native.model.model.fused_decode is None


def test_bfloat16_activations_on_quantized_weights(mixed_gguf: tuple[Path, Any]) -> None:
    """--dtype bfloat16 with kept-quantized weights: bf16 activations and KV, prefill GEMMs on
    bf16 tiles, decode GEMVs computed in float32; --dtype auto stays float32."""
    path, hf = mixed_gguf
    fast = ModelRunner(str(path), dtype="bfloat16")
    assert fast.dtype == torch.bfloat16 and fast.quantization == "gguf"
    assert ModelRunner(str(path)).dtype == torch.float32

    # bf16 everywhere on random tiny weights loses a lot against float32 (any bf16 path does:
    # the dense SDPA reference in bf16 is as far off); compare the prompt's logits with both.
    def prompt_logits(runner: ModelRunner) -> torch.Tensor:
        driver = GreedyDriver(runner, record_logits=True)
        rid = driver.add(PROMPTS[0], 1)
        driver.run()
        return driver.logits[rid][0]

    ours = prompt_logits(fast)
    dense = prompt_logits(
        ModelRunner(
            str(path), dtype="bfloat16", quantization="none", attention_backend="torch_native"
        )
    )
    with torch.inference_mode():
        ref = hf(torch.tensor([PROMPTS[0]])).logits[0].float()
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(ours, ref, dim=-1).min() > 0.9
    assert cosine(ours, dense, dim=-1).min() > 0.99
