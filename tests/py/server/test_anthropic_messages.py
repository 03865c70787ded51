"""The Anthropic Messages API (``/v1/messages``, ``/v1/messages/count_tokens``).

First the pure translations (Anthropic request -> OpenAI chat body, OpenAI reply -> Anthropic
message, OpenAI chunks -> Anthropic events) on hand-written data, then the routes through the
official ``anthropic`` client against the session server (deterministic: temperature 0).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError
from sglang.srt.entrypoints.anthropic.protocol import MessagesRequest
from sglang.srt.entrypoints.anthropic.translate import (
    StreamTranslator,
    anthropic_message,
    openai_body,
)
from sglang.srt.entrypoints.http_guards import ApiKeyGuard

WEATHER_TOOL = {"name": "get_weather", "description": "The weather of a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}


def request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    return MessagesRequest.model_validate({**body, **fields})


# ---- request translation -------------------------------------------------------------------------
def test_plain_request_translates() -> None:
    body = openai_body(request(system=[{"type": "text", "text": "Be brief."},
                                       {"type": "text", "text": "Be kind."}],
                               temperature=0, top_k=5, stop_sequences=["END"],
                               metadata={"user_id": "u1"}))
    assert body == {"model": "m", "max_tokens": 8, "temperature": 0, "top_k": 5,
                    "stop": ["END"], "user": "u1",
                    "messages": [{"role": "system", "content": "Be brief.\nBe kind."},
                                 {"role": "user", "content": "Hi"}]}


def test_stream_request_asks_for_usage() -> None:
    body = openai_body(request(stream=True))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_tool_round_trip_translates() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "sunny"}]},
            {"type": "text", "text": "Thanks"}]},
    ]
    body = openai_body(request(messages=messages, tools=[WEATHER_TOOL],
                               tool_choice={"type": "tool", "name": "get_weather"}))
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather of a city.",
        "parameters": WEATHER_TOOL["input_schema"]}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "Thanks"},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")])
def test_tool_choice_translates(choice: dict, expected: str) -> None:
    assert openai_body(request(tools=[WEATHER_TOOL], tool_choice=choice))["tool_choice"] \
        == expected


def test_error_tool_result_is_marked() -> None:
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t",
                                                   "name": "get_weather", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                              "content": "no such city", "is_error": True}]}]
    body = openai_body(request(messages=messages, tools=[WEATHER_TOOL]))
    assert body["messages"][1]["content"] is None
    assert body["messages"][2:] == [{"role": "tool", "tool_call_id": "t",
                                     "content": "Error: no such city"}]


@pytest.mark.parametrize(("fields", "needle"), [
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}]}]},
     "image content blocks are not supported yet"),
    ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER_TOOL]}, "nope"),
    ({"tool_choice": {"type": "maybe"}}, "tool_choice"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"temperature": 1.5}, "temperature"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
])
def test_bad_requests_name_the_field(fields: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        request(**fields)


# ---- reply translation ---------------------------------------------------------------------------
def reply(message: dict, finish_reason: str, matched_stop: Any = None) -> dict:
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish_reason, "matched_stop": matched_stop}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


def test_text_reply_translates() -> None:
    msg = anthropic_message(reply({"content": "Hello"}, "stop", 2), request())
    assert msg["id"].startswith("msg_") and msg["type"] == "message"
    assert msg["content"] == [{"type": "text", "text": "Hello"}]
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("end_turn", None)
    assert msg["usage"] == {"input_tokens": 11, "output_tokens": 3}


@pytest.mark.parametrize(("finish", "matched", "expected"), [
    ("length", None, ("max_tokens", None)),
    ("stop", "END", ("stop_sequence", "END")),
    ("stop", "</s>", ("end_turn", None)),
    ("tool_calls", None, ("tool_use", None))])
def test_stop_reasons(finish: str, matched: Any, expected: tuple) -> None:
    msg = anthropic_message(reply({"content": "x"}, finish, matched),
                            request(stop_sequences=["END"]))
    assert (msg["stop_reason"], msg["stop_sequence"]) == expected


def test_tool_call_reply_translates() -> None:
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    msg = anthropic_message(reply({"content": None, "tool_calls": calls}, "tool_calls"),
                            request(tools=[WEATHER_TOOL]))
    [block] = msg["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"city": "Paris"})


# ---- stream translation --------------------------------------------------------------------------
def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None,
          matched: Any = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                         "matched_stop": matched}]
    return {"id": "x", "object": "chat.completion.chunk", "choices": choices, "usage": usage}


def translate(req: MessagesRequest, chunks: list[dict]) -> list[dict]:
    t = StreamTranslator(req, input_tokens=11)
    events = t.start()
    for c in chunks:
        events += t.feed(c)
    return events + t.finish()


def test_text_stream_translates() -> None:
    events = translate(request(stop_sequences=["END"]), [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
        chunk({"content": "lo"}), chunk({}, "stop", matched="END"),
        chunk(usage={"prompt_tokens": 11, "completion_tokens": 2})])
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[0]["message"]["usage"] == {"input_tokens": 11, "output_tokens": 0}
    assert "".join(e["delta"]["text"] for e in events[3:5]) == "Hello"
    assert events[6]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert events[6]["usage"] == {"input_tokens": 11, "output_tokens": 2}


def test_tool_stream_translates() -> None:
    events = translate(request(tools=[WEATHER_TOOL]), [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"), chunk(usage={"prompt_tokens": 11, "completion_tokens": 9})])
    start = events[2]
    assert start["type"] == "content_block_start"
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "get_weather"
    pieces = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_empty_stream_still_has_a_text_block() -> None:
    events = translate(request(), [chunk({}, "length"),
                                   chunk(usage={"prompt_tokens": 11, "completion_tokens": 0})])
    assert [e["type"] for e in events][2:] == ["content_block_start", "content_block_stop",
                                               "message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


# ---- x-api-key -----------------------------------------------------------------------------------
def guarded_status(guard: ApiKeyGuard, path: str, headers: dict[str, str]) -> int:
    """The status ``guard`` gives a POST to ``path`` (an app behind it answers 200)."""
    sent: list[dict] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    guard.app = app
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"]


def test_anthropic_routes_take_x_api_key() -> None:
    guard = ApiKeyGuard(None, "k-123", None, list)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert guarded_status(guard, path, {"x-api-key": "k-123"}) == 200
        assert guarded_status(guard, path, {"authorization": "Bearer k-123"}) == 200
        assert guarded_status(guard, path, {"x-api-key": "k-12"}) == 401
        assert guarded_status(guard, path, {}) == 401
    assert guarded_status(guard, "/generate", {"x-api-key": "k-123"}) == 401
