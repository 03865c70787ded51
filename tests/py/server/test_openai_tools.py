"""Tool calls through /v1/chat/completions on a server started with ``--tool-call-parser hermes``.

The demo model does not write tool calls by itself: a ``regex`` extra makes its output a
``<tool_call>`` block (tool_choice auto), or the forcing grammar of tool_choice required / named
does. Non-streaming and streaming replies must agree (the joined argument deltas equal the
arguments).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from openai import OpenAI
from server_utils import DEMO_MODEL, SERVER_ARGS, serving

CITY = {"type": "string", "enum": ["Paris", "London", "Tokyo"]}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": CITY}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time of a city",
        "parameters": {"type": "object", "properties": {"city": CITY}, "required": ["city"]}}},
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|London)"\}\}\n</tool_call>'
TWO_CALLS = (r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n'
             r'</tool_call>\n<tool_call>\n\{"name": "get_time", "arguments": \{"city": "Tokyo"\}\}'
             r'\n</tool_call>')


@pytest.fixture(scope="module")
def tools_server() -> Iterator[str]:
    with serving(DEMO_MODEL, [*SERVER_ARGS, "--tool-call-parser", "hermes"]) as url:
        yield url


@pytest.fixture(scope="module")
def client(tools_server: str) -> OpenAI:
    return OpenAI(base_url=f"{tools_server}/v1", api_key="x")


def chat(client: OpenAI, **kwargs):
    kwargs.setdefault("messages", MESSAGES)
    return client.chat.completions.create(model="default", temperature=0, seed=1, **kwargs)


def streamed(client: OpenAI, **kwargs) -> tuple[str, list[dict], str | None]:
    """(content, calls [{id, name, arguments}], finish_reason) joined from a stream."""
    content, calls, finish = "", {}, None
    for chunk in chat(client, stream=True, **kwargs):
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                if tc.index not in calls:
                    assert tc.id and tc.type == "function" and tc.function.name, \
                        "a call's first delta has its id, type and name"
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                else:
                    assert tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def calls_of(message) -> list[dict]:
    return [{"name": c.function.name, "arguments": c.function.arguments}
            for c in message.tool_calls or []]


# ---- tool_choice auto: the parser finds the calls ---------------------------------------------
def test_auto_parses_a_call_stream_or_not(client: OpenAI) -> None:
    body = {"tools": TOOLS, "max_tokens": 64, "extra_body": {"regex": CALL}}
    choice = chat(client, **body).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content in ("", None)
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "London")
    content, calls, finish = streamed(client, **body)
    assert finish == "tool_calls" and content == ""
    assert [{"name": c["name"], "arguments": c["arguments"]} for c in calls] == \
        calls_of(choice.message)


def test_text_before_and_two_calls(client: OpenAI) -> None:
    body = {"tools": TOOLS, "max_tokens": 200,
            "extra_body": {"regex": r"Let me check\.\n" + TWO_CALLS}}
    reply = chat(client, **body)
    message = reply.choices[0].message
    assert message.content == "Let me check."
    expected = [{"name": "get_weather", "arguments": '{"city": "Paris"}'},
                {"name": "get_time", "arguments": '{"city": "Tokyo"}'}]
    assert calls_of(message) == expected
    content, calls, finish = streamed(client, **body)
    assert content == "Let me check." and finish == "tool_calls"
    assert [{"name": c["name"], "arguments": c["arguments"]} for c in calls] == expected
    assert len({c["id"] for c in calls}) == 2


def test_unknown_tool_in_output_is_dropped(client: OpenAI) -> None:
    regex = r'<tool_call>\n\{"name": "launch", "arguments": \{\}\}\n</tool_call>'
    reply = chat(client, tools=TOOLS, max_tokens=64, extra_body={"regex": regex})
    choice = reply.choices[0]
    assert choice.message.tool_calls is None or choice.message.tool_calls == []
    assert choice.finish_reason == "stop"


def test_tool_choice_none_leaves_the_text(client: OpenAI) -> None:
    reply = chat(client, tools=TOOLS, tool_choice="none", max_tokens=64,
                 extra_body={"regex": CALL})
    message = reply.choices[0].message
    assert not message.tool_calls
    assert message.content.startswith("<tool_call>")
    assert reply.choices[0].finish_reason == "stop"


def test_no_tools_no_parsing(client: OpenAI) -> None:
    reply = chat(client, max_tokens=64, extra_body={"regex": CALL})
    assert not reply.choices[0].message.tool_calls
    assert reply.choices[0].message.content.startswith("<tool_call>")


# ---- tool_choice required / named: the grammar forces the calls ------------------------------
def test_required_forces_a_call(client: OpenAI) -> None:
    body = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 64}
    reply = chat(client, **body)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = calls_of(choice.message)
    assert len(calls) == 1 and calls[0]["name"] in ("get_weather", "get_time")
    assert json.loads(calls[0]["arguments"])["city"] in CITY["enum"]
    content, stream_calls, finish = streamed(client, **body)
    assert finish == "tool_calls" and not content
    assert [{"name": c["name"], "arguments": c["arguments"]} for c in stream_calls] == calls


def test_named_tool_forces_its_arguments(client: OpenAI) -> None:
    body = {"tools": TOOLS, "max_tokens": 64,
            "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    reply = chat(client, **body)
    choice = reply.choices[0]
    calls = calls_of(choice.message)
    assert [c["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["arguments"])["city"] in CITY["enum"]
    assert choice.finish_reason == "tool_calls"
    _, stream_calls, finish = streamed(client, **body)
    assert finish == "tool_calls"
    assert [{"name": c["name"], "arguments": c["arguments"]} for c in stream_calls] == calls


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("body,message", [
    ({"tool_choice": "required"}, "Tools cannot be empty if tool choice is set to required."),
    ({"tools": [], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "Tools cannot be empty if tool choice is set to a specific tool."),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "Tool 'nope' not found in tools list."),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "parameters"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "name"),
])
def test_errors(tools_server: str, body: dict, message: str) -> None:
    resp = requests.post(f"{tools_server}/v1/chat/completions",
                         json={"model": "default", "messages": MESSAGES, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()
    text = json.dumps(error)
    assert message in text, text
