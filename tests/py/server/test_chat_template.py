"""Chat templates (openai/chat_template.py): acceptance 6 of issue 10, the rendered prompt of ten
conversations equals ``tokenizer.apply_chat_template`` on the demo model (text and token ids,
special tokens not added twice), and the template sources (file, JSON, builtin name, tokenizer).
No server: the demo model's tokenizer only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from server_utils import DEMO_MODEL
from sglang.srt.entrypoints.openai.chat_template import (
    BUILTIN_TEMPLATES,
    RENDER_ERROR,
    ChatTemplate,
    ChatTemplateError,
    load_template,
)

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}

# (messages, options) of the ten conversations of acceptance 6.
CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], {}),
    ([{"role": "system", "content": "You are terse."},
      {"role": "user", "content": "Name a color."}], {}),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Tell me a joke."}], {}),
    ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "1+1?"},
      {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"},
      {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}], {}),
    ([{"role": "user", "content": "Write a haiku."}], {"add_generation_prompt": False}),
    ([{"role": "user", "content": "Continue the list: apples,"},
      {"role": "assistant", "content": "apples, pears,"}], {"continue_final_message": True}),
    ([{"role": "user", "content": "Unicode: héllo wörld 你好 🙂"}], {}),
    ([{"role": "user", "content": "  leading and trailing spaces  \n\n"}], {}),
    ([{"role": "developer", "content": "Answer in French."},
      {"role": "user", "content": "Good morning"}], {}),
    ([{"role": "user", "content": "Weather in Paris?"}], {"tools": [WEATHER_TOOL]}),
]


@pytest.fixture(scope="module")
def tokenizer():
    from sglang.srt.hf_transformers_utils import get_tokenizer

    return get_tokenizer(DEMO_MODEL)


@pytest.fixture(scope="module")
def template(tokenizer) -> ChatTemplate:
    resolved = ChatTemplate.resolve(None, tokenizer)
    assert resolved is not None and resolved.source == "tokenizer"
    return resolved


@pytest.mark.parametrize(("messages", "options"), CONVERSATIONS,
                         ids=[f"conv{i}" for i in range(len(CONVERSATIONS))])
def test_render_equals_apply_chat_template(tokenizer, template, messages, options) -> None:
    add_gen = options.get("add_generation_prompt", True)
    cont = options.get("continue_final_message", False)
    tools = options.get("tools")
    ours = template.render(messages, tools=tools, add_generation_prompt=add_gen,
                           continue_final_message=cont)
    expected = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_gen and not cont,
        continue_final_message=cont)
    assert ours == expected
    expected_ids = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, add_generation_prompt=add_gen and not cont,
        continue_final_message=cont, return_dict=False)
    # The route tokenizes without adding special tokens (the template writes them).
    assert tokenizer.encode(ours, add_special_tokens=False) == list(expected_ids)


def test_continue_final_message_leaves_the_turn_open(template) -> None:
    text = template.render([{"role": "user", "content": "Count"},
                            {"role": "assistant", "content": "1, 2,"}],
                           continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\n1, 2,")


def test_text_parts_are_joined(template) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    assert template.render([{"role": "user", "content": parts}]) == \
        template.render([{"role": "user", "content": "Hello world"}])


def test_builtin_qwen25_tools_and_tool_messages(tokenizer) -> None:
    """Tool-call arguments (JSON text in OpenAI messages) reach the template as dicts."""
    qwen = ChatTemplate.resolve("qwen25", tokenizer)
    assert qwen is not None and qwen.source == "builtin:qwen25"
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
    ours = qwen.render(messages, tools=[WEATHER_TOOL])
    as_dict = json.loads(json.dumps(messages))
    as_dict[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    expected = tokenizer.apply_chat_template(as_dict, tools=[WEATHER_TOOL], tokenize=False,
                                             add_generation_prompt=True,
                                             chat_template=BUILTIN_TEMPLATES["qwen25"])
    assert ours == expected
    assert '"arguments": {"city": "Paris"}' in ours
    assert "<tool_response>\n{\"temp\": 21}\n</tool_response>" in ours
    assert '"name": "get_weather"' in ours.split("<|im_end|>")[0]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtins_render(tokenizer, name) -> None:
    text = ChatTemplate.resolve(name, tokenizer).render(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert "S" in text and "U" in text and text.endswith("\n")


def test_template_files(tmp_path: Path, tokenizer) -> None:
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    assert ChatTemplate.resolve(str(jinja), tokenizer).render(
        [{"role": "user", "content": "x"}]) == "[user]x"
    as_json = tmp_path / "t.json"
    as_json.write_text(json.dumps({"chat_template": "<{{ messages[0]['content'] }}>"}))
    assert ChatTemplate.resolve(str(as_json), tokenizer).render(
        [{"role": "user", "content": "y"}]) == "<y>"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"template": "x"}))
    with pytest.raises(ValueError, match="chat_template"):
        load_template(str(bad))
    with pytest.raises(ValueError, match="neither a file nor a builtin"):
        load_template("no-such-template")


def test_render_errors_are_chat_template_errors(tokenizer) -> None:
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}"
                          "{{ raise_exception('first message must be user') }}{% endif %}ok",
                          "test")
    assert strict.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="first message must be user") as info:
        strict.render([{"role": "system", "content": "x"}])
    assert str(info.value).startswith(RENDER_ERROR)
    broken = ChatTemplate("{{ messages[0]['content'] + 1 }}", "test")
    with pytest.raises(ChatTemplateError):
        broken.render([{"role": "user", "content": "x"}])


def test_no_template() -> None:
    class Bare:
        chat_template = None
        special_tokens_map = None

    assert ChatTemplate.resolve(None, Bare()) is None


def test_a_bad_chat_template_fails_at_launch(tmp_path) -> None:
    from sglang.srt.server_args import ServerArgs

    with pytest.raises(ValueError, match="neither a file nor a builtin"):
        ServerArgs(model_path="x", chat_template=str(tmp_path / "missing.jinja"))
    bad_json = tmp_path / "t.json"
    bad_json.write_text('{"template": "x"}')
    with pytest.raises(ValueError, match="chat_template"):
        ServerArgs(model_path="x", chat_template=str(bad_json))
    assert ServerArgs(model_path="x", chat_template="chatml").chat_template == "chatml"
