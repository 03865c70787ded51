"""Fixtures of the model tests: tiny random-weight HF checkpoints (saved once per session) and
their transformers reference outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from model_test_utils import NEW_TOKENS, PROMPTS, VOCAB, hf_greedy, hf_model, save_tiny_model


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: real-weight model tests (downloads, ~1 min)")


def _configs() -> dict[str, Any]:
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = {
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 1024,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    return {
        "llama": LlamaConfig(**common, num_hidden_layers=3, rms_norm_eps=1e-5, rope_theta=10000.0),
        "llama3_rope": LlamaConfig(
            **common,
            num_hidden_layers=2,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        "qwen2": Qwen2Config(**common, num_hidden_layers=2, tie_word_embeddings=True),
        "qwen3": Qwen3Config(
            **{**common, "num_key_value_heads": 1}, num_hidden_layers=4, head_dim=32
        ),
    }


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Model tests check numbers, not speed: one intra-op thread keeps them fast and steady on a
    shared CI box (OpenMP workers spin-wait badly when other processes hold the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        name: save_tiny_model(cfg, root / name, seed=i)
        for i, (name, cfg) in enumerate(_configs().items())
    }


@pytest.fixture(scope="session")
def hf_reference(tiny_models: dict[str, Path]) -> dict[str, list[list[int]]]:
    """transformers greedy outputs of every tiny model for ``PROMPTS``."""
    out = {}
    for name, folder in tiny_models.items():
        model = hf_model(folder)
        out[name] = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    return out
