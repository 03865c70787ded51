"""The Anthropic Messages API (``/v1/messages``, ``/v1/messages/count_tokens``).

First the pure translations (Anthropic request -> OpenAI chat body, OpenAI reply -> Anthropic
message, OpenAI chunks -> Anthropic events) on hand-written data, then the routes through the
official ``anthropic`` client against the session server (deterministic: temperature 0).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import jsonschema
import pytest
import requests
from pydantic import ValidationError
from sglang.srt.entrypoints.anthropic.messages import as_anthropic, stream_events
from sglang.srt.entrypoints.anthropic.protocol import MessagesRequest
from sglang.srt.entrypoints.anthropic.translate import (
    StreamTranslator,
    anthropic_message,
    openai_body,
)
from sglang.srt.entrypoints.http_guards import ApiKeyGuard
from sglang.srt.entrypoints.openai.common import OpenAIError
from sglang.srt.managers.req_state import RequestFailed

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


def test_final_assistant_message_is_continued() -> None:
    prefill = [{"role": "user", "content": "Capital of France?"},
               {"role": "assistant", "content": "The capital is"}]
    assert openai_body(request(messages=prefill))["continue_final_message"] is True
    assert "continue_final_message" not in openai_body(request())


def test_stream_request_asks_for_usage() -> None:
    body = openai_body(request(stream=True))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_tool_round_trip_translates() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [  # a reply's blocks sent back whole, nulls included
            {"type": "text", "text": "Let me look.", "citations": None},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}, "caller": None, "toolset_name": None}]},
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


def test_image_blocks_translate_to_image_url_parts_in_block_order() -> None:
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo"}
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "First"}, {"type": "text", "text": "second"},
        {"type": "image", "source": png},
        {"type": "image", "source": {"type": "url", "url": "https://x/b.jpg"}},
        {"type": "text", "text": "Both?"}]}]
    req = request(messages=messages)
    assert req.image_blocks() == [(0, 2), (0, 3)]
    assert openai_body(req)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "First\nsecond"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo"}},
        {"type": "image_url", "image_url": {"url": "https://x/b.jpg"}},
        {"type": "text", "text": "Both?"}]}]


def test_an_image_in_a_tool_result_is_refused() -> None:
    messages = [
        {"role": "user", "content": "Draw it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get_weather",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}]}]}]
    with pytest.raises(ValidationError, match="image blocks in tool_result content"):
        request(messages=messages, tools=[WEATHER_TOOL])


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
    assert body["messages"][1]["content"] == ""
    assert body["messages"][2:] == [{"role": "tool", "tool_call_id": "t",
                                     "content": "Error: no such city"}]


@pytest.mark.parametrize(("fields", "needle"), [
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}]}]},
     "cannot contain image blocks"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}]}]},
     "media_type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "http://x/a.pdf"}}]}]},
     "document content blocks are not supported yet"),
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



# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "status", "kind"), [
    (OpenAIError("bad"), 400, "invalid_request_error"),
    (OpenAIError("busy", 503, "ServiceUnavailable"), 503, "overloaded_error"),
    (RequestFailed("too long", 413), 413, "request_too_large"),
    (RequestFailed("engine", 500), 500, "api_error"),
])
def test_errors_take_the_anthropic_shape(exc: Exception, status: int, kind: str) -> None:
    error = as_anthropic(exc)
    assert error.status_code == status
    assert error.body() == {"type": "error", "error": {"type": kind, "message": exc.message}}


def test_failure_mid_stream_is_an_error_event() -> None:
    closed = []

    async def chunks() -> Any:
        try:
            yield chunk({"role": "assistant", "content": ""})
            yield chunk({"content": "Hel"})
            raise RequestFailed("The engine died.", 503)
        finally:
            closed.append(True)

    async def collect() -> list[bytes]:
        return [e async for e in stream_events(StreamTranslator(request(), 3), chunks())]

    frames = asyncio.run(collect())
    last = frames[-1].decode()
    assert last.startswith("event: error\ndata: ")
    assert json.loads(last.split("data: ", 1)[1]) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "The engine died."}}
    assert [f.split(b"\n")[0] for f in frames[:-1]] == [
        b"event: message_start", b"event: ping", b"event: content_block_start",
        b"event: content_block_delta"]
    assert closed == [True]

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


# ---- through the anthropic client ----------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key="x", max_retries=0, timeout=60)


def create(client: anthropic.Anthropic, **fields: Any) -> Any:
    """messages.create at temperature 0 (the client takes sampling fields in ``extra_body``)."""
    params = {"model": "default", "max_tokens": 16, "extra_body": {"temperature": 0},
              "messages": [{"role": "user", "content": "Say hello."}]}
    return client.messages.create(**{**params, **fields})


def token_count(server: str, text: str) -> int:
    r = requests.post(f"{server}/tokenize", json={"prompt": text, "add_special_tokens": False},
                      timeout=30)
    return r.json()["count"]


def test_create_text_and_usage(client: anthropic.Anthropic, server: str) -> None:
    msg = create(client, max_tokens=8)
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "default"
    assert msg.id.startswith("msg_")
    [block] = msg.content
    assert block.type == "text" and block.text
    counted = client.messages.count_tokens(
        model="default", messages=[{"role": "user", "content": "Say hello."}])
    assert msg.usage.input_tokens == counted.input_tokens > 0
    assert (msg.stop_reason, msg.stop_sequence) == ("max_tokens", None)
    assert msg.usage.output_tokens == 8 == token_count(server, block.text)


def test_end_turn_and_stop_sequence(client: anthropic.Anthropic, server: str) -> None:
    hi = [{"role": "user", "content": "Hi"}]
    ended = create(client, max_tokens=24, messages=hi)
    text = ended.content[0].text
    assert (ended.stop_reason, ended.stop_sequence) == ("end_turn", None)
    # the end-of-turn token is counted too, as in the OpenAI usage
    assert ended.usage.output_tokens == token_count(server, text) + 1
    word = text.split()[-2]
    stopped = create(client, max_tokens=24, messages=hi, stop_sequences=["<none>", word])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", word)
    assert stopped.content[0].text == text[:text.index(word)]


def test_stream_matches_create(client: anthropic.Anthropic) -> None:
    fields = {"model": "default", "max_tokens": 12, "extra_body": {"temperature": 0},
              "messages": [{"role": "user", "content": "Tell me about the sea."}]}
    whole = client.messages.create(**fields)
    with client.messages.stream(**fields) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == whole.stop_reason


def test_raw_stream_events(server: str) -> None:
    body = {"model": "default", "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    with requests.post(f"{server}/v1/messages", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    names = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta",
                                                                     "message_stop"]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in datas] == names
    assert datas[0]["message"]["usage"]["input_tokens"] > 0


def test_system_as_string_and_blocks(client: anthropic.Anthropic) -> None:
    system = "You are a pirate. Answer briefly."
    as_string = create(client, system=system, max_tokens=4)
    as_blocks = create(client, system=[{"type": "text", "text": system}], max_tokens=4)
    assert as_string.content[0].text == as_blocks.content[0].text
    assert as_string.usage.input_tokens == as_blocks.usage.input_tokens
    plain = client.messages.count_tokens(model="default", messages=[
        {"role": "user", "content": "Say hello."}]).input_tokens
    assert as_string.usage.input_tokens != plain  # the template's default system was replaced


def test_multi_turn(client: anthropic.Anthropic) -> None:
    first = create(client, messages=[{"role": "user", "content": "My name is Ada."}],
                   max_tokens=4)
    second = create(client, messages=[
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.content[0].text},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}],
        max_tokens=4)
    assert second.content[0].text
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_prefill_is_continued(client: anthropic.Anthropic) -> None:
    ask = {"role": "user", "content": "What is the capital of France?"}
    msg = create(client, max_tokens=3, messages=[
        ask, {"role": "assistant", "content": "The capital of France is"}])
    assert msg.content[0].text.strip().startswith("Paris"), msg.content[0].text
    counted = client.messages.count_tokens(model="default", messages=[
        ask, {"role": "assistant", "content": "The capital of France is"}])
    assert counted.input_tokens == msg.usage.input_tokens


def test_forced_tool_round_trip(client: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = create(client, max_tokens=64, messages=ask, tools=[WEATHER_TOOL],
                 tool_choice={"type": "tool", "name": "get_weather"})
    assert msg.stop_reason == "tool_use"
    [use] = [b for b in msg.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER_TOOL["input_schema"])
    reply = create(client, max_tokens=4, tools=[WEATHER_TOOL], messages=[
        *ask, {"role": "assistant", "content": msg.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "Sunny, 21 degrees."}]}])
    assert reply.content and reply.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_streaming_tool_use(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
            model="default", max_tokens=64, extra_body={"temperature": 0}, tools=[WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=[{"role": "user", "content": "Weather in Rome?"}]) as stream:
        pieces = [e.delta.partial_json for e in stream
                  if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        final = stream.get_final_message()
    assert len(pieces) >= 1
    data = json.loads("".join(pieces))
    jsonschema.validate(data, WEATHER_TOOL["input_schema"])
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.input == data and final.stop_reason == "tool_use"


def test_count_tokens_matches_usage(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    short = client.messages.count_tokens(model="default", messages=messages,
                                         system="Be brief.").input_tokens
    long = client.messages.count_tokens(model="default", messages=messages,
                                        system="Be brief. Answer in French.").input_tokens
    assert long > short > 0
    with_tools = client.messages.count_tokens(model="default", messages=messages,
                                              system="Be brief.", tools=[WEATHER_TOOL])
    assert with_tools.input_tokens >= short
    msg = create(client, messages=messages, system="Be brief. Answer in French.", max_tokens=1)
    assert msg.usage.input_tokens == long


BAD_BODIES = [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 4, "messages": []}, "messages"),
    ({"max_tokens": 4, "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "AAAA"}}]}]},
     ("messages.0.content.1: image blocks are not supported: the model LlamaForCausalLM does "
      "not take images")),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL],
      "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": "x"}],
      "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": "x"}], "best_of": 2}, "best_of"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": "x"}],
      "thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
]


@pytest.mark.parametrize(("fields", "needle"), BAD_BODIES)
def test_bad_requests(client: anthropic.Anthropic, server: str, fields: dict,
                      needle: str) -> None:
    body = {"model": "default", **fields}
    r = requests.post(f"{server}/v1/messages", json=body, timeout=30)
    assert r.status_code == 400
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert needle in error["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):  # the client's own request path
        client.post("/v1/messages", body=body, cast_to=object)



def test_bad_json_and_engine_refusals_have_the_anthropic_shape(client: anthropic.Anthropic,
                                                               server: str) -> None:
    assert create(client, max_tokens=2).usage.output_tokens == 2  # still serving
    r = requests.post(f"{server}/v1/messages", data=b"{not json", timeout=30,
                      headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = requests.post(f"{server}/v1/messages/count_tokens", json={"model": "m"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(f"{server}/v1/messages", timeout=30, json={
        "model": "default", "max_tokens": 10_000_000,
        "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
