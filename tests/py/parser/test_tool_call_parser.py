"""ToolCallParser: each format whole and streamed in any chunking (the joined stream equals the
non-streaming parse), text around calls, several calls, unknown names, malformed JSON."""

from __future__ import annotations

import json

import pytest
from sglang.srt.parser.tool_call_parser import (
    TOOL_CALL_PARSERS,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
)

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}},
]
WEATHER = '{"city": "Paris"}'
ADD = '{"a": 1, "b": [2, {"c": "}\\" ]"}]}'  # braces and quotes inside strings


def hermes(name: str, args: str, key: str = "arguments") -> str:
    return f'<tool_call>\n{{"name": "{name}", "{key}": {args}}}\n</tool_call>'


def stream(parser: ToolCallParser, pieces: list[str]
           ) -> tuple[str, list[ToolCall], list[ToolCallDelta]]:
    """Joined content and calls of a stream (checking the delta rules), and all deltas."""
    content, deltas = "", []
    for piece in pieces:
        text, calls = parser.parse_stream_chunk(piece)
        content += text
        deltas += calls
    text, calls = parser.flush()
    content += text
    deltas += calls
    joined: dict[int, list[str]] = {}
    for delta in deltas:
        if delta.index not in joined:
            assert delta.name is not None, "a call's first delta carries its name"
            assert delta.index == len(joined), "calls are numbered from 0 in order"
            joined[delta.index] = [delta.name, ""]
        else:
            assert delta.name is None, "only a call's first delta carries its name"
        joined[delta.index][1] += delta.arguments
    return content, [ToolCall(n, a) for n, a in joined.values()], deltas


CASES = [
    # kind, output, content, calls
    ("hermes", hermes("get_weather", WEATHER), "", [ToolCall("get_weather", WEATHER)]),
    ("qwen25", "Let me check.\n" + hermes("get_weather", WEATHER), "Let me check.",
     [ToolCall("get_weather", WEATHER)]),
    ("hermes", hermes("get_weather", WEATHER) + "\n" + hermes("add", ADD), "",
     [ToolCall("get_weather", WEATHER), ToolCall("add", ADD)]),
    ("hermes", hermes("add", "{}", key="parameters") + "\nDone.", "Done.", [ToolCall("add", "{}")]),
    ("hermes", '<tool_call>\n{"arguments": {"a": 1}, "name": "add"}\n</tool_call>', "",
     [ToolCall("add", '{"a": 1}')]),
    ("hermes", '<tool_call>{"name": "add"}</tool_call>', "", [ToolCall("add", "{}")]),
    ("hermes", "No tools needed. 1 < 2 and <tool", "No tools needed. 1 < 2 and <tool", []),
    ("hermes", 'x <tool_call>\n{"name": "add", "arguments": {"a": 1}}', "x",
     [ToolCall("add", '{"a": 1}')]),  # end marker missing: the call is complete anyway
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": ' + WEATHER + "}", "",
     [ToolCall("get_weather", WEATHER)]),
    ("llama3", '{"name": "get_weather", "parameters": ' + WEATHER + '}; {"name": "add", '
     '"parameters": ' + ADD + "}", "", [ToolCall("get_weather", WEATHER), ToolCall("add", ADD)]),
    ("llama3", 'Sure.<|python_tag|>{"name": "add", "parameters": {"a": 2}}', "Sure.",
     [ToolCall("add", '{"a": 2}')]),
    ("llama3", 'The JSON {"name": "add"} is not a call', 'The JSON {"name": "add"} is not a call',
     []),
    ("llama3", '{"answer": 42} is plain JSON', '{"answer": 42} is plain JSON', []),
    ("llama3", '{"answer": [1, 2', '{"answer": [1, 2', []),
    ("llama3", '{not json}', '{not json}', []),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": ' + WEATHER + "}]", "",
     [ToolCall("get_weather", WEATHER)]),
    ("mistral", 'I will call two. [TOOL_CALLS] [{"name": "get_weather", "arguments": ' + WEATHER
     + '}, {"name": "add", "arguments": ' + ADD + "}]", "I will call two.",
     [ToolCall("get_weather", WEATHER), ToolCall("add", ADD)]),
    ("mistral", "plain [TOOL_CALL] text", "plain [TOOL_CALL] text", []),
]


@pytest.mark.parametrize("kind,text,content,calls", CASES)
def test_non_stream(kind: str, text: str, content: str, calls: list[ToolCall]) -> None:
    assert ToolCallParser(kind, TOOLS).parse_non_stream(text) == (content, calls)
    for call in calls:
        json.loads(call.arguments)


@pytest.mark.parametrize("kind,text,content,calls", CASES)
def test_stream_equals_non_stream(kind: str, text: str, content: str, calls: list[ToolCall],
                                  chunking) -> None:
    got_content, got_calls, _ = stream(ToolCallParser(kind, TOOLS), chunking(text))
    assert (got_content, got_calls) == (content, calls)


def test_name_first_then_arguments_incrementally() -> None:
    parser = ToolCallParser("hermes", TOOLS)
    assert parser.parse_stream_chunk("Hi <tool_") == ("Hi", [])
    assert parser.parse_stream_chunk('call>\n{"name": "get_wea') == ("", [])
    assert parser.parse_stream_chunk('ther", "arguments": {"ci') == \
        ("", [ToolCallDelta(0, "get_weather", '{"ci')])
    assert parser.parse_stream_chunk('ty": "Paris"}}\n</tool') == \
        ("", [ToolCallDelta(0, None, 'ty": "Paris"}')])
    assert parser.parse_stream_chunk("_call>") == ("", [])
    assert parser.flush() == ("", [])


def test_unknown_tool_is_dropped() -> None:
    text = hermes("launch_rockets", "{}") + hermes("add", '{"a": 1}')
    assert ToolCallParser("hermes", TOOLS).parse_non_stream(text) == \
        ("", [ToolCall("add", '{"a": 1}')])
    _, calls, deltas = stream(ToolCallParser("hermes", TOOLS), list(text))
    assert calls == [ToolCall("add", '{"a": 1}')] and deltas[0].index == 0


def test_malformed_json_is_dropped_and_parsing_goes_on() -> None:
    text = ('<tool_call>\n{"name": "add", "arguments": {"a": }}\n</tool_call>\n'
            + hermes("get_weather", WEATHER) + "\nafter")
    assert ToolCallParser("hermes", TOOLS).parse_non_stream(text) == \
        ("after", [ToolCall("get_weather", WEATHER)])
    parser = ToolCallParser("hermes", TOOLS)
    content, calls, _ = stream(parser, list(text))
    # The stream sent the broken call's name and start before the error showed: it is marked.
    assert content == "after" and calls[-1] == ToolCall("get_weather", WEATHER)
    assert parser.malformed == {0}


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>',  # name not a string
    '<tool_call>\nnot json\n</tool_call>',
    '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "add", "arguments": {"a": 1}',  # cut short
])
def test_malformed_calls(text: str) -> None:
    assert ToolCallParser("hermes", TOOLS).parse_non_stream(text) == ("", [])


@pytest.mark.parametrize("kind", ["llama3", "mistral"])
def test_malformed_json_other_formats(kind: str) -> None:
    text = {"llama3": '<|python_tag|>{"name": "add", "parameters": {"a": 1,}}',
            "mistral": '[TOOL_CALLS] [{"name": "add", "arguments": {"a" 1}}]'}[kind]
    assert ToolCallParser(kind, TOOLS).parse_non_stream(text) == ("", [])


def test_unknown_kind() -> None:
    assert set(TOOL_CALL_PARSERS) == {"hermes", "qwen25", "llama3", "mistral"}
    with pytest.raises(ValueError, match="hermes"):
        ToolCallParser("pythonic", TOOLS)


def test_no_tools_means_no_calls() -> None:
    text = hermes("add", "{}")
    assert ToolCallParser("hermes", []).parse_non_stream(text) == ("", [])
