"""Translations between the Anthropic Messages API and the OpenAI chat layer.

The Anthropic routes (``messages``) serve through the OpenAI chat layer (``openai/chat``), the
one path into the engine: ``openai_body`` turns a validated ``MessagesRequest`` into the body of
an OpenAI chat request; ``anthropic_message`` turns the OpenAI ``chat.completion`` reply into an
Anthropic ``message``; ``StreamTranslator`` turns the ``chat.completion.chunk`` objects of a
stream into the Anthropic stream events. Everything here is pure: dicts in, dicts out.

Mapping notes: text blocks of one message are joined by newlines; a user turn with ``image``
blocks has a content list instead, in block order: text parts (consecutive text blocks joined by
newlines) and ``image_url`` parts (a base64 source as ``data:{media_type};base64,{data}``, a url
source as is), which the chat layer turns into the request's ``image_data``; a ``tool_result``
becomes a ``tool`` message (``is_error`` results are prefixed with ``"Error: "``, OpenAI has no
flag for it) placed before the user's text; ``thinking`` blocks of earlier turns are left out
(Anthropic drops them from the context too); ``metadata.user_id`` becomes ``user``; a final
assistant message is a prefill the reply continues (``continue_final_message``), as Anthropic's
is.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sglang.srt.entrypoints.anthropic.protocol import (
    Message,
    MessagesRequest,
    PromptRequest,
    ToolChoiceTool,
)

ERROR_PREFIX = "Error: "


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex}"


# ---- request -------------------------------------------------------------------------------------
def openai_messages(req: PromptRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages (system first)."""
    out: list[dict[str, Any]] = []
    system = req.system_text()
    if system is not None:
        out.append({"role": "system", "content": system})
    for message in req.messages:
        out.extend(openai_turn(message))
    return out


def openai_turn(message: Message) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: an assistant turn is one message (text and
    tool_calls); a user turn is one ``tool`` message per tool_result, then its text, if any."""
    blocks = message.blocks()
    text = "\n".join(b.text for b in blocks if b.type == "text")
    if message.role == "assistant":
        calls = [{"id": b.id, "type": "function",
                  "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                 for b in blocks if b.type == "tool_use"]
        if not calls:
            return [{"role": "assistant", "content": text}]
        # content "" rather than null: many templates print ``message['content']`` as is
        return [{"role": "assistant", "content": text, "tool_calls": calls}]
    out: list[dict[str, Any]] = []
    for b in blocks:
        if b.type == "tool_result":
            content = ERROR_PREFIX + b.text() if b.is_error else b.text()
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": content})
    if any(b.type == "image" for b in blocks):
        out.append({"role": "user", "content": user_parts(blocks)})
    elif not out or any(b.type == "text" for b in blocks):
        out.append({"role": "user", "content": text})
    return out


def user_parts(blocks: list[Any]) -> list[dict[str, Any]]:
    """The text and image blocks of a user turn as OpenAI content parts, in block order
    (consecutive text blocks joined by newlines, as in a text-only turn)."""
    parts: list[dict[str, Any]] = []
    for b in blocks:
        if b.type == "image":
            parts.append({"type": "image_url", "image_url": {"url": b.url()}})
        elif b.type == "text":
            if parts and parts[-1]["type"] == "text":
                parts[-1]["text"] += "\n" + b.text
            else:
                parts.append({"type": "text", "text": b.text})
    return parts


def openai_tools(req: PromptRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of the OpenAI request (only those
    the Anthropic request sets)."""
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [{"type": "function", "function": {
            "name": t.name, "parameters": t.input_schema,
            **({"description": t.description} if t.description is not None else {})}}
            for t in req.tools]
    choice = req.tool_choice
    if choice is None or not req.tools:
        return out
    if isinstance(choice, ToolChoiceTool):
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if getattr(choice, "disable_parallel_tool_use", None):
        out["parallel_tool_calls"] = False
    return out


def openai_body(req: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat request body of ``POST /v1/messages`` (one choice; a stream ends with a
    usage chunk)."""
    body: dict[str, Any] = {"model": req.model, "messages": openai_messages(req),
                            "max_tokens": req.max_tokens, **openai_tools(req)}
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.stop_sequences:
        body["stop"] = list(req.stop_sequences)
    if req.metadata is not None and req.metadata.user_id is not None:
        body["user"] = req.metadata.user_id
    if req.messages[-1].role == "assistant":
        body["continue_final_message"] = True
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def prompt_body(req: PromptRequest) -> dict[str, Any]:
    """The OpenAI chat request of ``/v1/messages/count_tokens``: the prompt-making part only."""
    body = {"model": req.model, "messages": openai_messages(req), **openai_tools(req)}
    if req.messages[-1].role == "assistant":
        body["continue_final_message"] = True
    return body


# ---- reply ---------------------------------------------------------------------------------------
def stop_reason(finish_reason: str | None, matched_stop: Any,
                stop_sequences: list[str] | None) -> tuple[str | None, str | None]:
    """(``stop_reason``, ``stop_sequence``) of an OpenAI finish reason and matched stop."""
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if isinstance(matched_stop, str) and matched_stop in (stop_sequences or ()):
        return "stop_sequence", matched_stop
    if finish_reason is None:
        return None, None
    return "end_turn", None


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the ``input`` object (a non-object is wrapped, never lost)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The content of an OpenAI assistant message as Anthropic blocks: its text (kept, even
    empty, when there is no tool call), then one tool_use block per tool call."""
    calls = message.get("tool_calls") or []
    text = message.get("content") or ""
    blocks: list[dict[str, Any]] = []
    if text or not calls:
        blocks.append({"type": "text", "text": text})
    for call in calls:
        function = call["function"]
        blocks.append({"type": "tool_use", "id": tool_use_id(), "name": function["name"],
                       "input": tool_input(function.get("arguments") or "")})
    return blocks


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    return {"input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0)}


def anthropic_message(reply: dict[str, Any], req: MessagesRequest) -> dict[str, Any]:
    """The Anthropic ``message`` of an OpenAI ``chat.completion`` reply (one choice)."""
    choice = reply["choices"][0]
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("matched_stop"),
                                   req.stop_sequences)
    return {"id": message_id(), "type": "message", "role": "assistant", "model": req.model,
            "content": content_blocks(choice["message"]), "stop_reason": reason,
            "stop_sequence": sequence, "usage": anthropic_usage(reply.get("usage"))}


# ---- stream --------------------------------------------------------------------------------------
class StreamTranslator:
    """Turns the ``chat.completion.chunk`` objects of one OpenAI stream (one choice, ending with
    a usage chunk) into Anthropic stream events: ``message_start`` and ``ping`` first, a
    start/delta.../stop run per content block (text, or tool_use with ``input_json_delta``
    pieces), then ``message_delta`` (stop reason, usage) and ``message_stop``.

    Mutates itself as chunks are fed; each call returns the events that chunk completes."""

    def __init__(self, req: MessagesRequest, input_tokens: int = 0) -> None:
        self.req = req
        self.input_tokens = input_tokens
        self.index = -1  # the index of the open content block, -1 before the first
        self.open_kind: str | None = None  # "text" / "tool_use" while a block is open
        self.tool_index: int | None = None  # the OpenAI tool-call index of the open block
        self.finish_reason: str | None = None
        self.matched_stop: Any = None
        self.usage: dict[str, Any] | None = None

    def start(self) -> list[dict[str, Any]]:
        message = {"id": message_id(), "type": "message", "role": "assistant",
                   "model": self.req.model, "content": [], "stop_reason": None,
                   "stop_sequence": None,
                   "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one chunk."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
                self.matched_stop = choice.get("matched_stop")
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The closing events, after the last chunk."""
        events = [] if self.index >= 0 else self._open({"type": "text", "text": ""})
        events += self._close()
        reason, sequence = stop_reason(self.finish_reason, self.matched_stop,
                                       self.req.stop_sequences)
        usage = anthropic_usage(self.usage)
        if self.usage is None:
            usage["input_tokens"] = self.input_tokens
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": reason, "stop_sequence": sequence},
                       "usage": usage})
        events.append({"type": "message_stop"})
        return events

    def _close(self) -> list[dict[str, Any]]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        self.tool_index = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _open(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.index += 1
        self.open_kind = block["type"]
        return events + [{"type": "content_block_start", "index": self.index,
                          "content_block": block}]

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = [] if self.open_kind == "text" else self._open({"type": "text", "text": ""})
        return events + [{"type": "content_block_delta", "index": self.index,
                          "delta": {"type": "text_delta", "text": text}}]

    def _tool_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        function = call.get("function") or {}
        call_index = call.get("index", 0)
        if self.open_kind != "tool_use" or call_index != self.tool_index:
            events += self._open({"type": "tool_use", "id": tool_use_id(),
                                  "name": function.get("name") or "", "input": {}})
            self.tool_index = call_index
        if function.get("arguments"):
            events.append({"type": "content_block_delta", "index": self.index,
                           "delta": {"type": "input_json_delta",
                                     "partial_json": function["arguments"]}})
        return events
