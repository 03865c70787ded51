"""GGUF loading (metadata -> config, llama.cpp names and Q/K permutation, dequantization),
ModelConfig normalization, model path resolution and the architecture registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_test_utils import NEW_TOKENS, PROMPTS, GreedyDriver, hf_greedy, write_llama_gguf
from sglang.srt.configs.model_config import ModelConfig, resolve_dtype
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.model_loader.resolve import resolve_model_path
from sglang.srt.models.registry import get_model_class


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    reference_state = write_llama_gguf(tiny_models["llama"], path)
    return path, reference_state


def test_gguf_matches_transformers_on_the_same_weights(
    tiny_gguf: tuple[Path, dict[str, torch.Tensor]], tiny_models: dict[str, Path]
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    path, state = tiny_gguf
    runner = ModelRunner(str(path))
    cfg = runner.model_config
    assert (cfg.architecture, cfg.num_key_value_heads, cfg.context_length) == (
        "LlamaForCausalLM",
        2,
        1024,
    )
    assert cfg.eos_token_ids == [2] and not cfg.tie_word_embeddings
    hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_models["llama"]))
    hf.load_state_dict(state)
    hf = hf.float().eval()
    expected = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    assert GreedyDriver(runner).generate(PROMPTS, NEW_TOKENS) == expected
    # A folder holding just that one .gguf resolves to it.
    assert resolve_model_path(path.parent).gguf_file == path.name


def test_model_config_normalizes_hf_configs(tmp_path: Path) -> None:
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 100,
        "max_position_embeddings": 256,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        "eos_token_id": [5, 6],
    }
    cfg = ModelConfig.from_hf_config(raw, generation_config={"eos_token_id": 7}, context_length=128)
    assert cfg.head_dim == 16 and cfg.num_key_value_heads == 4
    assert cfg.rope.rope_type == "llama3" and cfg.rope_theta == 500000.0
    assert cfg.rope.original_max_position_embeddings == 64
    assert cfg.eos_token_ids == [5, 6, 7]
    assert cfg.context_length == 128 and cfg.dtype == torch.float32
    assert not cfg.attention_bias and not cfg.qk_norm
    qwen2 = ModelConfig.from_hf_config(
        {**raw, "model_type": "qwen2", "architectures": None, "rope_scaling": None}
    )
    assert qwen2.architecture == "Qwen2ForCausalLM" and qwen2.attention_bias
    assert qwen2.rope.rope_type == "default" and qwen2.context_length == 256
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_hf_config({**raw, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


def test_dtype_resolution() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("half", "cpu") == torch.float16
    assert resolve_dtype("float", "cuda") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float8"):
        resolve_dtype("float8", "cpu")


def test_model_runner_options(tiny_models: dict[str, Path]) -> None:
    runner = ModelRunner(str(tiny_models["qwen3"]), context_length=512, dtype="float32")
    assert runner.model_config.context_length == 512 and runner.dtype == torch.float32
    assert runner.kv_bytes_per_token() == 2 * 4 * 1 * 32 * 4  # K+V, layers, kv heads, dim, fp32
    assert runner.profile_max_num_tokens(0.8) is None
    pool = runner.init_kv_pool(64)
    assert pool.get_kv(0)[0].shape == (64, 1, 32)
    with pytest.raises(ValueError, match="load format"):
        ModelRunner(str(tiny_models["qwen3"]), load_format="npz")


def test_bad_model_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope"):
        resolve_model_path(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        resolve_model_path(tmp_path / "empty")
    bad_file = tmp_path / "weights.bin"
    bad_file.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin"):
        resolve_model_path(bad_file)
    fake_gguf = tmp_path / "broken.gguf"
    fake_gguf.write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="broken.gguf"):
        ModelRunner(str(fake_gguf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no-such-org/no-such-model"):
        resolve_model_path("no-such-org/no-such-model")


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Qwen3ForCausalLM") as e:
        get_model_class("GPT2LMHeadModel")
    assert "GPT2LMHeadModel" in str(e.value)
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["FancyForCausalLM"],
                "model_type": "llama",
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 8,
                "vocab_size": 10,
            }
        )
    )
    with pytest.raises(ValueError, match="FancyForCausalLM"):
        ModelRunner(str(folder), load_format="dummy")
