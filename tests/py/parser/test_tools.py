"""plan_tools (tool_choice rules, errors, the forcing schemas and that the grammar backends compile
them) and ForcedToolOutput (grammar-forced output read back as calls, whole and streamed)."""

from __future__ import annotations

import json

import pytest
from sglang.srt.entrypoints.openai.common import OpenAIError
from sglang.srt.entrypoints.openai.tools import ForcedToolOutput, ToolPlan, plan_tools
from sglang.srt.parser.tool_call_parser import ToolCall

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "now"}},  # no parameters
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def schema(plan: ToolPlan) -> dict:
    return json.loads(plan.constraint["json_schema"])


def test_auto_is_the_default_with_tools() -> None:
    for choice in (None, "auto"):
        plan = plan_tools(TOOLS, choice, True, "hermes")
        assert plan.template_tools == TOOLS
        assert plan.constraint == {} and not plan.forced and plan.named is None


def test_none_shows_no_tools() -> None:
    plan = plan_tools(TOOLS, "none", True, "hermes")
    assert plan.template_tools is None and plan.constraint == {} and not plan.forced


def test_no_tools() -> None:
    for tools in (None, []):
        for choice in (None, "none", "auto"):
            plan = plan_tools(tools, choice, True, None)
            assert plan.template_tools is None and plan.constraint == {} and not plan.forced


def test_required_schema() -> None:
    plan = plan_tools(TOOLS, "required", True, None)
    assert plan.forced and plan.named is None and plan.template_tools == TOOLS
    got = schema(plan)
    assert got["type"] == "array" and got["minItems"] == 1 and "maxItems" not in got
    items = got["items"]["anyOf"]
    assert [i["properties"]["name"]["enum"] for i in items] == [["get_weather"], ["now"]]
    assert items[0]["properties"]["parameters"] == WEATHER_PARAMS
    assert items[1]["properties"]["parameters"] == {"type": "object", "properties": {}}
    assert schema(plan_tools(TOOLS, "required", False, None))["maxItems"] == 1


def test_named_schema() -> None:
    plan = plan_tools(TOOLS, NAMED, True, "hermes")
    assert plan.forced and plan.named == "get_weather"
    assert plan.template_tools == [TOOLS[0]]
    assert schema(plan) == WEATHER_PARAMS


def test_typed_models_are_accepted() -> None:
    class Dumps:
        def __init__(self, value: dict) -> None:
            self.value = value

        def model_dump(self, exclude_none: bool = False) -> dict:
            return self.value

    plan = plan_tools([Dumps(t) for t in TOOLS], Dumps(NAMED), True, None)
    assert plan.named == "get_weather"


@pytest.mark.parametrize("tools,choice,message", [
    (None, "required", "Tools cannot be empty if tool choice is set to required."),
    ([], "required", "Tools cannot be empty if tool choice is set to required."),
    (None, NAMED, "Tools cannot be empty if tool choice is set to a specific tool."),
    (TOOLS, {"type": "function", "function": {"name": "nope"}},
     "Tool 'nope' not found in tools list."),
    (TOOLS, "sometimes", "tool_choice must be"),
    (TOOLS, {"type": "function", "function": {}}, "tool_choice must name a function"),
    ([{"type": "function", "function": {"parameters": {}}}], None, "tools[0].function.name"),
    ([{"type": "function"}], None, "tools[0].function is required"),
    ([TOOLS[0], {"type": "retrieval", "function": {"name": "x"}}], None, "tools[1].type"),
    ([{"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}], None,
     "tools[0].function.parameters must be an object schema"),
    ([{"type": "function", "function": {"name": "x", "parameters": [1]}}], None,
     "tools[0].function.parameters must be a JSON schema object"),
    ("tools", None, "tools must be a list"),
])
def test_errors(tools, choice, message: str) -> None:
    with pytest.raises(OpenAIError) as info:
        plan_tools(tools, choice, True, None)
    assert message in info.value.message
    assert info.value.status_code == 400


# ---- the schemas compile and accept what ForcedToolOutput reads --------------------------------
def _xgrammar_accepts(schema_text: str, text: str) -> bool:
    xgrammar = pytest.importorskip("xgrammar")
    grammar = xgrammar.Grammar.from_json_schema(schema_text, any_whitespace=False)
    return xgrammar.testing._is_grammar_accept_string(grammar, text)


def test_required_schema_compiles_and_constrains() -> None:
    text = plan_tools(TOOLS, "required", True, None).constraint["json_schema"]
    two = json.dumps([{"name": "get_weather", "parameters": {"city": "Paris"}},
                      {"name": "now", "parameters": {}}])
    assert _xgrammar_accepts(text, two)
    assert not _xgrammar_accepts(text, json.dumps([{"name": "other", "parameters": {}}]))
    assert not _xgrammar_accepts(text, "[]")
    single = plan_tools(TOOLS, "required", False, None).constraint["json_schema"]
    assert not _xgrammar_accepts(single, two)


def test_named_schema_compiles() -> None:
    text = plan_tools(TOOLS, NAMED, True, None).constraint["json_schema"]
    assert _xgrammar_accepts(text, json.dumps({"city": "Paris"}))
    assert not _xgrammar_accepts(text, json.dumps({"town": "Paris"}))


def test_schemas_compile_with_outlines() -> None:
    pytest.importorskip("outlines_core")
    from outlines_core.json_schema import build_regex_from_schema

    for choice in ("required", NAMED):
        assert build_regex_from_schema(plan_tools(TOOLS, choice, True, None)
                                       .constraint["json_schema"])


# ---- ForcedToolOutput --------------------------------------------------------------------------
def _stream(forced: ForcedToolOutput, pieces: list[str]) -> list[ToolCall]:
    joined: dict[int, list[str]] = {}
    for piece in pieces:
        for delta in forced.parse_stream_chunk(piece):
            if delta.index not in joined:
                assert delta.name is not None
                joined[delta.index] = [delta.name, ""]
            else:
                assert delta.name is None
            joined[delta.index][1] += delta.arguments
    return [ToolCall(n, a) for n, a in joined.values()]


def test_forced_required(chunking) -> None:
    plan = plan_tools(TOOLS, "required", True, None)
    text = json.dumps([{"name": "get_weather", "parameters": {"city": "Paris"}},
                       {"name": "now", "parameters": {}}])
    expected = [ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("now", "{}")]
    assert ForcedToolOutput(plan).parse_non_stream(text) == expected
    assert _stream(ForcedToolOutput(plan), chunking(text)) == expected


def test_forced_named(chunking) -> None:
    plan = plan_tools(TOOLS, NAMED, True, None)
    text = '{"city": "Paris"}'
    expected = [ToolCall("get_weather", text)]
    assert ForcedToolOutput(plan).parse_non_stream(text) == expected
    assert _stream(ForcedToolOutput(plan), chunking(text)) == expected


def test_forced_required_cut_short_is_dropped() -> None:
    plan = plan_tools(TOOLS, "required", True, None)
    assert ForcedToolOutput(plan).parse_non_stream('[{"name": "get_weather", "parame') == []
