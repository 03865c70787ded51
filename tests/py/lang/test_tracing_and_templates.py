"""Tracing (prefix extraction, graphs) and the chat-template registry."""

from __future__ import annotations

import pytest
import sglang as sgl
from scripted_backend import ScriptedBackend
from sglang.lang.chat_template import (
    get_chat_template,
    get_chat_template_by_model_path,
)
from sglang.lang.interpreter import cache_program
from sglang.lang.ir import SglGen, SglSelect
from sglang.lang.tracer import extract_prefix_by_tracing


def test_prefix_stops_at_the_first_argument_or_gen() -> None:
    @sgl.function
    def few_shot(s, question):
        s += "The following are questions with answers.\n\n"
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: " + question + "\nA:" + sgl.gen("answer")

    prefix = extract_prefix_by_tracing(few_shot, ScriptedBackend())
    assert prefix == ("The following are questions with answers.\n\n"
                      "Q: What is the capital of France?\nA: Paris\nQ: ")


def test_prefix_includes_role_prefixes_and_the_system_prompt() -> None:
    @sgl.function
    def chat(s, question):
        s += sgl.user(question)

    assert extract_prefix_by_tracing(chat, ScriptedBackend("qwen")) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


def test_trace_errors_are_swallowed_and_short_prefixes_not_cached() -> None:
    @sgl.function
    def uses_with(s, q):
        with s.user():
            s += q

    @sgl.function
    def formats(s, q):
        s += f"Question: {q}"

    backend = ScriptedBackend()
    assert extract_prefix_by_tracing(uses_with, backend) == ""
    with pytest.raises(TypeError):
        formats.trace()
    cache_program(formats, backend)
    assert backend.cached == []


def test_trace_records_nodes_and_forks() -> None:
    @sgl.function
    def prog(s, topic):
        s += "Topic: " + topic
        s += sgl.gen("summary", 16)
        forks = s.fork(2)
        forks += sgl.select("pick", choices=["a", "b"])

    tracer = prog.trace()
    kinds = [type(n).__name__ for n in tracer.flatten_nodes()]
    assert kinds == ["SglConstantText", "SglArgument", "SglGen"]
    assert isinstance(tracer.variables["summary"].source, SglGen)
    child = tracer.child_states[0]
    assert isinstance(child.variables["pick"].source, SglSelect)
    graph = child.last_node.print_graph_dfs()
    assert "GetForkItem" in graph and "Fork" in graph and "Select" in graph


@pytest.mark.parametrize("path,name", [
    ("Qwen/Qwen3-0.6B", "default"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "qwen"),
    ("meta-llama/Llama-3.2-1B-Instruct", "llama-3-instruct"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama-2-chat"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
    ("deepseek-ai/DeepSeek-V3", "deepseek-v3"),
    ("deepseek-ai/DeepSeek-V3-Base", "default"),
    ("Qwen/Qwen2-VL-7B-Instruct", "qwen2-vl"),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "chatml"),
    ("lmsys/vicuna-7b-v1.5", "vicuna_v1.1"),
    ("google/gemma-2-2b-it", "gemma-it"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm"),
])
def test_model_path_matching(path: str, name: str) -> None:
    assert get_chat_template_by_model_path(path).name == name


def test_registry_and_get_prompt() -> None:
    with pytest.raises(KeyError):
        get_chat_template("no-such-template")
    llama3 = get_chat_template("llama-3-instruct")
    assert llama3.stop_str == ("<|eot_id|>",) and llama3.image_token == "<|image|>"
    assert llama3.get_prefix_and_suffix("tool", []) == ("", "")
    prompt = get_chat_template("llama-2-chat").get_prompt([
        {"role": "system", "content": "SYS"}, {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}])
    assert prompt == "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST]A1 </s><s>[INST] U2 [/INST]"
    for name in ("default", "claude", "chatml", "qwen", "qwen2-vl", "mistral", "deepseek-v3",
                 "gemma-it", "chatml-llava", "vicuna_v1.1", "llama-4", "yi-1.5",
                 "dbrx-instruct", "c4ai-command-r", "granite-3-instruct", "glm-4v"):
        assert get_chat_template(name).name == name


def test_the_demo_template_matches_the_tokenizers_chat_template() -> None:
    """The frontend's SmolLM2 table renders what the model's own Jinja template renders."""
    transformers = pytest.importorskip("transformers")
    del transformers
    from sglang.srt.hf_transformers_utils import get_tokenizer
    from sglang.srt.model_loader.resolve import resolve_model_path

    tokenizer = get_tokenizer(resolve_model_path("smollm2-135m-instruct"))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "More"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False)
    template = get_chat_template("smollm")
    rendered = template.get_prompt([{"role": "system", "content": None}, *messages])
    assert rendered == expected
