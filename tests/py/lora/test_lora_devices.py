"""LoRA served by the offline Engine on each device: the CPU here, CUDA where there is a GPU
(``gpu``-marked; there the Triton LoRA kernel, triton attention and CUDA graphs run).

A tiny random Llama (float32) and a PEFT-format adapter written by hand (every projection, rank 4,
random A and B), so no ``peft`` is needed on the GPU machine. The reference is transformers on the
CPU with the adapter merged into the weights (W + alpha / r * B A). One batch mixes the adapter
and the base model: each row must give the reference's greedy tokens. On the CPU the same batch
also runs on two data-parallel replicas of two tensor-parallel ranks each (adapter shards).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA, NEW = 4, 8, 6
PROMPTS = [[11 + 7 * i for i in range(9)], [300 - 5 * i for i in range(14)]]


def _modules(model: torch.nn.Module, layer: int) -> dict[str, torch.nn.Linear]:
    block = model.model.layers[layer]
    return {name: getattr(block.self_attn if name.endswith(("q_proj", "k_proj", "v_proj",
                                                             "o_proj")) else block.mlp, name)
            for name in TARGETS}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("lora-devices")
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=0.1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "base")
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for name, linear in _modules(model, layer).items():
            prefix = f"base_model.model.model.layers.{layer}." \
                     f"{'self_attn' if name[0] in 'qkvo' else 'mlp'}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = 0.3 * torch.randn(
                RANK, linear.in_features, generator=generator)
            tensors[f"{prefix}.lora_B.weight"] = 0.3 * torch.randn(
                linear.out_features, RANK, generator=generator)
    adapter = root / "adapter"
    adapter.mkdir()
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": list(TARGETS),
        "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(root / "base")}))
    return root / "base", adapter


def _greedy(model: torch.nn.Module, ids: list[int]) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def reference(folders: tuple[Path, Path]) -> dict[str, list[list[int]]]:
    """transformers' greedy tokens: the base model, and the adapter merged into its weights."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    base, adapter = folders
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    out = {}
    with torch.no_grad():
        out["base"] = [_greedy(model, ids) for ids in PROMPTS]
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        for layer in range(len(model.model.layers)):
            for name, linear in _modules(model, layer).items():
                prefix = f"base_model.model.model.layers.{layer}." \
                         f"{'self_attn' if name[0] in 'qkvo' else 'mlp'}.{name}"
                a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
                linear.weight += ALPHA / RANK * b @ a
        out["lora"] = [_greedy(model, ids) for ids in PROMPTS]
    assert out["lora"] != out["base"]  # the adapter changes the tokens
    return out


@pytest.mark.parametrize(("device", "parallel"), [
    ("cpu", {}), ("cpu", {"dp_size": 2, "tp_size": 2}),
    pytest.param("cuda", {}, marks=pytest.mark.gpu)])
def test_mixed_batch_equals_merged_weights(device: str, parallel: dict, folders: tuple[Path, Path],
                                           reference: dict[str, list[list[int]]]) -> None:
    import sglang as sgl

    base, adapter = folders
    with sgl.Engine(model_path=str(base), dtype="float32", device=device,
                    skip_tokenizer_init=True, lora_paths=[f"ad={adapter}"],
                    max_loras_per_batch=2, max_total_tokens=1024, random_seed=0,
                    log_level="warning", **parallel) as llm:
        assert llm.tokenizer_manager.info.device.startswith(device)
        greedy = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}
        batch = llm.generate(input_ids=PROMPTS + PROMPTS, sampling_params=greedy,
                             lora_path=["ad", None, None, "ad"])
    got = [item["output_ids"] for item in batch]
    assert got == [reference["lora"][0], reference["base"][1],
                   reference["base"][0], reference["lora"][1]]
