"""Chat templates: which Jinja template turns a conversation into the prompt, and rendering it.

The template comes from ``--chat-template`` (a ``.jinja`` file, a ``.json`` file with a
``"chat_template"`` key, or a name of ``BUILTIN_TEMPLATES``), else from the tokenizer (an HF
folder's ``tokenizer_config.json``, or a GGUF file's ``tokenizer.chat_template`` metadata that
the GGUF tokenizer conversion carries over). ``ChatTemplate.render`` renders OpenAI-style message
dicts exactly as ``tokenizer.apply_chat_template(..., tokenize=False)`` does (same renderer, same
special-token variables), after the conversions SGLang makes: tool-call arguments (JSON strings
in OpenAI messages) become dicts, and a text-parts content becomes a string for templates that
print ``content`` as one. The chat route (``openai/chat.py``) and the frontend language use it;
nothing here depends on the server.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

RENDER_ERROR = "The chat template cannot render these messages: "

# A small registry of well-known templates, by name (--chat-template NAME).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3_INSTRUCT = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Qwen2.5's ChatML with tools: the tool list in the system turn, calls as <tool_call> JSON,
# tool results as <tool_response> in a user turn.
QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}"
    "{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query."
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    "\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and"
    " arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\":"
    " <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a"
    " helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}"
    "{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama-3-instruct": LLAMA3_INSTRUCT,
    "qwen2.5": QWEN25,
    "qwen25": QWEN25,
    "qwen2": QWEN25,
}

# A template that loops over ``content`` takes OpenAI's list of parts; others print it as a string.
_LOOPS_OVER_CONTENT = re.compile(r"\{%-?\s*for\s+\w+\s+in\s+[\w.\[\]'\"]*content")


class ChatTemplateError(ValueError):
    """A conversation the template cannot render (the route's 400)."""


def load_template(spec: str) -> str:
    """The template text of ``--chat-template``: a builtin name or a file (.jinja, or .json with
    a ``chat_template`` key). ValueError when it is neither."""
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--chat-template {spec!r} is neither a file nor a builtin template "
                         f"({', '.join(sorted(BUILTIN_TEMPLATES))}).")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--chat-template {spec}: invalid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("chat_template"), str):
            raise ValueError(f"--chat-template {spec}: the JSON file needs a string "
                             "'chat_template' key.")
        return data["chat_template"]
    return text


def tokenizer_template(tokenizer: Any) -> str | None:
    """The tokenizer's own template (its default one when it has several named ones)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template else None


class ChatTemplate:
    """One resolved template and the special-token variables the tokenizer passes to it."""

    def __init__(self, text: str, source: str, special_tokens: dict[str, Any] | None = None
                 ) -> None:
        self.text = text
        self.source = source  # "builtin:<name>", "file:<path>" or "tokenizer"
        self.special_tokens = dict(special_tokens or {})
        self.content_as_parts = bool(_LOOPS_OVER_CONTENT.search(text))

    @classmethod
    def resolve(cls, spec: str | None, tokenizer: Any) -> ChatTemplate | None:
        """``--chat-template`` if given, else the tokenizer's; None when there is none (chat
        requests then get a 400). ValueError for a bad ``--chat-template``."""
        special = dict(getattr(tokenizer, "special_tokens_map", None) or {})
        if spec:
            source = f"builtin:{spec}" if spec in BUILTIN_TEMPLATES else f"file:{spec}"
            return cls(load_template(spec), source, special)
        text = tokenizer_template(tokenizer) if tokenizer is not None else None
        return cls(text, "tokenizer", special) if text else None

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, continue_final_message: bool = False,
               **chat_template_kwargs: Any) -> str:
        """The prompt text of ``messages`` (OpenAI message dicts). ``continue_final_message``
        leaves the final (assistant) message open instead of adding a generation prompt.
        ChatTemplateError when the template fails on them."""
        from transformers.utils.chat_template_utils import render_jinja_template

        prepared = self.prepare_messages(messages)
        kwargs = {**self.special_tokens, **chat_template_kwargs}
        try:
            rendered, _ = render_jinja_template(
                conversations=[prepared], tools=tools, chat_template=self.text,
                continue_final_message=continue_final_message,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                **kwargs)
        except Exception as exc:  # noqa: BLE001 (a template can raise anything)
            raise ChatTemplateError(f"{RENDER_ERROR}{type(exc).__name__}: {exc}") from None
        return rendered[0]

    def prepare_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of ``messages`` as templates expect them: None values dropped, tool-call
        arguments parsed to dicts, text parts joined into one string unless the template loops
        over the parts."""
        out = []
        for message in messages:
            msg = {k: copy.deepcopy(v) for k, v in message.items() if v is not None}
            if isinstance(msg.get("content"), list) and not self.content_as_parts:
                msg["content"] = join_text_parts(msg["content"])
            for call in msg.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    function["arguments"] = parse_arguments(function["arguments"])
            out.append(msg)
        return out


def join_text_parts(parts: list[Any]) -> str:
    """The text parts of a content list, joined with spaces (as SGLang does for string
    templates)."""
    texts = [p["text"] for p in parts if isinstance(p, dict) and p.get("type") == "text"]
    return " ".join(texts)


def parse_arguments(arguments: str) -> Any:
    """A tool call's JSON arguments as a dict for the template (the string itself when it is
    not JSON)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
