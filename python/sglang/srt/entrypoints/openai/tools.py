"""``tools`` / ``tool_choice`` of a chat request: which tools the chat template sees, which
grammar constrains the output, and how a grammar-forced output becomes tool calls.

* ``"none"``: the template gets no tools (as SGLang), the output is plain content;
* ``"auto"`` (the default when tools are given): the template gets the tools, no constraint; the
  ``--tool-call-parser`` (if any) finds the calls in the output;
* ``"required"``: a JSON schema forces ``[{"name": <a tool>, "parameters": {...}}, ...]`` (one
  item at most unless ``parallel_tool_calls``);
* named ``{"type": "function", "function": {"name": N}}``: the template gets only N, a JSON
  schema forces N's parameters: the whole output is N's arguments.

The forced outputs are read by ``ForcedToolOutput`` (no tool-call parser needed). A call's
``arguments`` is the exact JSON text the model wrote; streamed pieces concatenate to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sglang.srt.entrypoints.openai.common import OpenAIError
from sglang.srt.parser.tool_call_parser import (
    JSON_ARRAY_FORMAT,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
)

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_CHOICES = ("none", "auto", "required")


@dataclass
class ToolPlan:
    template_tools: list[dict] | None  # OpenAI tool dicts for the template (None: no tools)
    constraint: dict[str, str]  # sampling params to add, e.g. {"json_schema": "..."} or {}
    forced: bool  # tool_choice required / named: the output is grammar JSON
    named: str | None
    tools: list[dict] | None = None  # the validated tools (for ForcedToolOutput)


def plan_tools(tools: list[dict] | None, tool_choice: Any, parallel_tool_calls: bool,
               parser_kind: str | None) -> ToolPlan:
    """The plan of a request's tools; OpenAIError (400, naming the field) for bad tools or
    choices. ``parser_kind`` (``--tool-call-parser``) does not change the plan: without one,
    ``auto`` still shows the tools to the template and the calls stay in the content."""
    tools = check_tools(tools)
    choice = check_tool_choice(tool_choice)
    if choice is None:
        choice = "auto" if tools else "none"
    if choice == "required":
        if not tools:
            raise OpenAIError("Tools cannot be empty if tool choice is set to required.")
        schema = required_schema(tools, parallel_tool_calls)
        return ToolPlan(tools, {"json_schema": json.dumps(schema)}, True, None, tools)
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if not tools:
            raise OpenAIError("Tools cannot be empty if tool choice is set to a specific tool.")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise OpenAIError(f"Tool '{name}' not found in tools list.")
        schema = parameters_of(chosen[0])
        return ToolPlan(chosen, {"json_schema": json.dumps(schema)}, True, name, chosen)
    if choice == "none" or not tools:
        return ToolPlan(None, {}, False, None, tools)
    return ToolPlan(tools, {}, False, None, tools)


# ---- validation ------------------------------------------------------------------------------------
def check_tools(tools: Any) -> list[dict] | None:
    """The tools as plain OpenAI dicts; OpenAIError naming the first bad field."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise OpenAIError("tools must be a list of {\"type\": \"function\", \"function\": {...}}.")
    return [_check_tool(_plain(tool), f"tools[{i}]") for i, tool in enumerate(tools)]


def _check_tool(tool: Any, where: str) -> dict:
    if not isinstance(tool, dict):
        raise OpenAIError(f"{where} must be an object.")
    if tool.get("type", "function") != "function":
        raise OpenAIError(f"{where}.type must be 'function', got {tool.get('type')!r}.")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise OpenAIError(f"{where}.function is required (an object with a name).")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise OpenAIError(f"{where}.function.name is required (a non-empty string).")
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise OpenAIError(f"{where}.function.parameters must be a JSON schema object.")
        if parameters.get("type", "object") != "object":
            raise OpenAIError(f"{where}.function.parameters must be an object schema "
                              f"(type 'object'), got type {parameters.get('type')!r}.")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise OpenAIError(f"{where}.function.description must be a string.")
    return {**tool, "type": "function"}


def check_tool_choice(tool_choice: Any) -> str | dict | None:
    """``None``, one of ``TOOL_CHOICES`` or ``{"type": "function", "function": {"name": N}}``."""
    tool_choice = _plain(tool_choice)
    if tool_choice is None or tool_choice in TOOL_CHOICES:
        return tool_choice
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if tool_choice.get("type", "function") == "function" and isinstance(name, str) and name:
            return {"type": "function", "function": {"name": name}}
        raise OpenAIError("tool_choice must name a function: "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}.")
    raise OpenAIError(f"tool_choice must be 'none', 'auto', 'required' or a named function, "
                      f"got {tool_choice!r}.")


def _plain(value: Any) -> Any:
    """A pydantic model as its dict (the route may pass its typed models)."""
    dump = getattr(value, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else value


# ---- schemas ---------------------------------------------------------------------------------------
def parameters_of(tool: dict) -> dict[str, Any]:
    """A tool's parameters schema (an empty object schema when it has none)."""
    return tool["function"].get("parameters") or dict(EMPTY_PARAMETERS)


def required_schema(tools: list[dict], parallel_tool_calls: bool) -> dict[str, Any]:
    """The JSON schema of ``tool_choice: required``: an array of 1+ calls, each one tool's name
    and parameters."""
    items = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                             "parameters": parameters_of(t)},
              "required": ["name", "parameters"]}
             for t in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": items[0] if len(items) == 1 else {"anyOf": items}}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


# ---- forced output ---------------------------------------------------------------------------------
class ForcedToolOutput:
    """Tool calls of an output the grammar forced (``required``: the array of calls; named: the
    arguments of that tool). One instance per choice of one request."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self._named = plan.named
        self._array = None if plan.named else ToolCallParser("json", plan.tools or [],
                                                             fmt=JSON_ARRAY_FORMAT)
        self._started = False

    def parse_non_stream(self, text: str) -> list[ToolCall]:
        if self._named is not None:
            return [ToolCall(self._named, text.lstrip() or "{}")]
        assert self._array is not None
        return self._array.parse_non_stream(text)[1]

    def parse_stream_chunk(self, delta: str) -> list[ToolCallDelta]:
        if self._named is not None:
            return self._named_chunk(delta)
        assert self._array is not None
        return self._array.parse_stream_chunk(delta)[1]

    def _named_chunk(self, delta: str) -> list[ToolCallDelta]:
        """The named tool's arguments, streamed as written (leading whitespace dropped)."""
        if not self._started:
            delta = delta.lstrip()
            if not delta:
                return []
            self._started = True
            return [ToolCallDelta(0, self._named, delta)]
        return [ToolCallDelta(0, None, delta)] if delta else []
