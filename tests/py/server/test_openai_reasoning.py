"""Reasoning through /v1/chat/completions: a tiny random-weight Qwen3 served with
``--reasoning-parser qwen3``, its chat template Qwen3's way (``enable_thinking`` false closes an
empty think block in the prompt). A ``regex`` extra makes the output contain a think block; the
reply must split it into ``reasoning_content`` and ``content``, streamed or not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from server_utils import DEMO_MODEL, serving

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}")
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
THINK = r"<think>\nI add two and two\.\n</think>\n\nThe answer is 4\."
REASONING, CONTENT = "I add two and two.", "The answer is 4."


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen3 with the demo model's tokenizer (the tags are plain text, several
    tokens each) and the template above."""
    import torch
    from sglang.srt.hf_transformers_utils import get_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer = get_tokenizer(DEMO_MODEL)
    tokenizer.chat_template = TEMPLATE
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=512, eos_token_id=2,
                         bos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2}))
    return folder


@pytest.fixture(scope="module")
def client(tiny_qwen3: Path) -> Iterator[OpenAI]:
    args = ["--max-total-tokens", "4096", "--skip-server-warmup", "--log-level", "warning",
            "--reasoning-parser", "qwen3"]
    with serving(str(tiny_qwen3), args) as url:
        yield OpenAI(base_url=f"{url}/v1", api_key="x")


def chat(client: OpenAI, regex: str, **kwargs):
    extra = {"regex": regex, **kwargs.pop("extra_body", {})}
    kwargs.setdefault("max_tokens", 80)
    return client.chat.completions.create(model="default", messages=MESSAGES, temperature=0,
                                          extra_body=extra, **kwargs)


def streamed(client: OpenAI, regex: str, **kwargs) -> tuple[str, str, int]:
    """(joined reasoning deltas, joined content deltas, chunks with reasoning)."""
    reasoning, content, with_reasoning = "", "", 0
    for chunk in chat(client, regex, stream=True, **kwargs):
        for choice in chunk.choices:
            piece = getattr(choice.delta, "reasoning_content", None)
            if piece:
                reasoning += piece
                with_reasoning += 1
            content += choice.delta.content or ""
    return reasoning, content, with_reasoning


def reasoning_of(message) -> str | None:
    return getattr(message, "reasoning_content", None)


def test_split_non_stream(client: OpenAI) -> None:
    reply = chat(client, THINK)
    message = reply.choices[0].message
    assert reasoning_of(message) == REASONING
    assert message.content == CONTENT
    assert reply.choices[0].finish_reason == "stop"


def test_split_stream_equals_non_stream(client: OpenAI) -> None:
    reasoning, content, pieces = streamed(client, THINK)
    assert (reasoning, content) == (REASONING, CONTENT)
    assert pieces > 1, "the reasoning is streamed in pieces"


def test_stream_reasoning_false_sends_it_at_once(client: OpenAI) -> None:
    reasoning, content, pieces = streamed(client, THINK,
                                          extra_body={"stream_reasoning": False})
    assert (reasoning, content) == (REASONING, CONTENT)
    assert pieces == 1


def test_no_think_block_is_all_content(client: OpenAI) -> None:
    message = chat(client, r"The answer is 4\.").choices[0].message
    assert reasoning_of(message) is None
    assert message.content == CONTENT


def test_separate_reasoning_false_keeps_the_tags(client: OpenAI) -> None:
    message = chat(client, THINK, extra_body={"separate_reasoning": False}).choices[0].message
    assert reasoning_of(message) is None
    assert message.content == f"<think>\n{REASONING}\n</think>\n\n{CONTENT}"
    _, content, pieces = streamed(client, THINK, extra_body={"separate_reasoning": False})
    assert content == message.content and pieces == 0


def test_unfinished_reasoning(client: OpenAI) -> None:
    regex = r"<think>\nStill thinking about it" + r", and about it again" * 10  # > 24 tokens
    reply = chat(client, regex, max_tokens=24)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "length"
    assert reasoning_of(message).startswith("Still thinking") and message.content == ""
    reasoning, content, _ = streamed(client, regex, max_tokens=24)
    assert (reasoning, content) == (reasoning_of(message), "")


def test_enable_thinking(client: OpenAI) -> None:
    # The template opened the block: output without "<think>" is reasoning until "</think>".
    opened = r"I add two and two\.\n</think>\n\nThe answer is 4\."
    kwargs = {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}}
    message = chat(client, opened, **kwargs).choices[0].message
    assert (reasoning_of(message), message.content) == (REASONING, CONTENT)
    # enable_thinking false: the prompt closes an empty block, the output is all content.
    off = {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}
    reply_off = chat(client, r"The answer is 4\.", **off)
    reply_default = chat(client, r"The answer is 4\.")
    assert reasoning_of(reply_off.choices[0].message) is None
    assert reply_off.choices[0].message.content == CONTENT
    assert reply_off.usage.prompt_tokens > reply_default.usage.prompt_tokens
