"""One server for the server tests: SmolLM2-135M-Instruct (the demo alias), started once per session.

``server`` yields its base URL; every test module ends by checking the engine is idle, its core
integrity check passes and no KV memory is held by requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_utils import DEMO_MODEL, SERVER_ARGS, assert_engine_clean, start_server, stop_server


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    proc, url = start_server(DEMO_MODEL, SERVER_ARGS)
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (fp32 safetensors, tied embeddings) with the demo model's tokenizer.

    Its attention and MLP outputs are scaled down, so the residual stream is dominated by the
    current token's embedding and greedy decoding repeats tokens: penalties visibly change it.
    """
    import torch
    from sglang.srt.hf_transformers_utils import get_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = get_tokenizer(DEMO_MODEL)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=2, bos_token_id=1,
                         initializer_range=0.1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.1)
            layer.mlp.down_proj.weight.mul_(0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # Sampling defaults a model may ship (used by --sampling-defaults model for chat requests).
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6, "top_p": 0.9}))
    return folder


@pytest.fixture(scope="module", autouse=True)
def engine_idle_after_module(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" not in request.fixturenames:
        return
    assert_engine_clean(request.getfixturevalue("server"))
