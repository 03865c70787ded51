"""The Anthropic Messages routes: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A body is parsed here (not by FastAPI, whose error would have the OpenAI shape) into the strict
models of ``protocol``, translated (``translate``) into an OpenAI chat request and served by the
OpenAI chat layer (``openai/chat``: ``create_chat_completion`` / ``start_chat_stream``), the one
path into the engine; its reply or chunks are translated back. Every error on these routes has
Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``: a bad body (400
``invalid_request_error``), an ``OpenAIError`` of the chat layer (its status mapped to the
Anthropic type), a failure after a stream started (an ``event: error`` event), anything
unexpected (500 ``api_error``, logged).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from sglang.srt.entrypoints.anthropic.protocol import (
    AnthropicError,
    CountTokensRequest,
    MessagesRequest,
    PromptRequest,
)
from sglang.srt.entrypoints.anthropic.translate import (
    StreamTranslator,
    anthropic_message,
    openai_body,
    prompt_body,
)
from sglang.srt.entrypoints.http_common import (
    ORJSONResponse,
    parse_json,
    retry_headers,
    tm_of,
    validation_message,
)
from sglang.srt.entrypoints.openai import chat
from sglang.srt.entrypoints.openai.common import (
    OpenAIError,
    check_generation_server,
    engine_errors,
)
from sglang.srt.entrypoints.openapi import body_schema
from sglang.srt.managers.tokenizer_manager import RequestFailed, TokenizerManager

logger = logging.getLogger("sglang.http_server")
router = APIRouter()


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of ``model``, without pydantic's ``discriminator`` objects (their
    mappings point at the ``$defs`` that ``body_schema`` inlines; ``oneOf`` says the same)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(body_schema(model))


# ---- parsing and errors --------------------------------------------------------------------------
async def parse_request(raw_request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``; AnthropicError (400) naming what is wrong with it."""
    try:
        data = await parse_json(raw_request)
        return model.model_validate(data)
    except RequestValidationError as exc:
        raise AnthropicError(validation_message(list(exc.errors()))) from None
    except ValidationError as exc:
        raise AnthropicError(validation_message(exc.errors(include_url=False))) from None


def chat_request(body: dict[str, Any]) -> Any:
    """The OpenAI chat request of a translated body; AnthropicError (400) when the chat layer's
    model refuses it."""
    try:
        return chat.ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise AnthropicError(validation_message(exc.errors(include_url=False))) from None


def check_images(tm: TokenizerManager, req: PromptRequest) -> None:
    """AnthropicError (400) naming the first image block when the model does not take
    images."""
    refused = chat.image_refusal(tm)
    blocks = req.image_blocks()
    if refused is not None and blocks:
        i, j = blocks[0]
        raise AnthropicError(f"messages.{i}.content.{j}: image blocks are not supported: "
                             f"{refused}.")


def error_response(exc: AnthropicError) -> ORJSONResponse:
    return ORJSONResponse(exc.body(), status_code=exc.status_code,
                          headers=retry_headers(exc.status_code))


def as_anthropic(exc: Exception) -> AnthropicError:
    """The Anthropic error of a failure of the chat layer or the engine."""
    if isinstance(exc, AnthropicError):
        return exc
    if isinstance(exc, (OpenAIError, RequestFailed)):
        return AnthropicError(exc.message, exc.status_code)
    logger.exception("unexpected error in an Anthropic route")
    return AnthropicError(f"Internal server error: {type(exc).__name__}: {exc}", 500)


async def guarded(serve: Any, raw_request: Request, model: type[BaseModel]) -> Response:
    """Parses the body and serves it; every failure before a reply is an Anthropic error."""
    try:
        req = await parse_request(raw_request, model)
        return await serve(tm_of(raw_request), req, raw_request)
    except Exception as exc:  # noqa: BLE001 (one request never takes the server down)
        return error_response(as_anthropic(exc))


# ---- /v1/messages --------------------------------------------------------------------------------
@router.post("/v1/messages", openapi_extra={"requestBody": request_body(MessagesRequest)})
async def create_message(raw_request: Request) -> Response:
    return await guarded(serve_message, raw_request, MessagesRequest)


async def serve_message(tm: TokenizerManager, req: MessagesRequest, raw_request: Request
                        ) -> Response:
    """The message (non-streaming) or the SSE stream of its events."""
    check_generation_server(tm)
    check_images(tm, req)
    chat_req = chat_request(openai_body(req))
    if req.stream:
        translator = StreamTranslator(req, await prompt_tokens(tm, chat_req))
        chunks = await chat.start_chat_stream(tm, chat_req, raw_request)
        return StreamingResponse(stream_events(translator, chunks),
                                 media_type="text/event-stream")
    reply = await chat.create_chat_completion(tm, chat_req, raw_request)
    return ORJSONResponse(anthropic_message(reply, req))


def sse_event(event: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: ``event: <type>`` then its data."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def stream_events(translator: StreamTranslator, chunks: AsyncIterator[dict[str, Any]]
                        ) -> AsyncIterator[bytes]:
    """The Anthropic events of an OpenAI chunk stream; a failure after the start is an
    ``event: error`` (the chat layer's iterator aborts what is left when it is closed)."""
    try:
        for event in translator.start():
            yield sse_event(event)
        async for chunk in chunks:
            for event in translator.feed(chunk):
                yield sse_event(event)
        for event in translator.finish():
            yield sse_event(event)
    except Exception as exc:  # noqa: BLE001 (the headers are sent: report it as an event)
        yield sse_event(as_anthropic(exc).body())
    finally:
        await chunks.aclose()


# ---- /v1/messages/count_tokens -------------------------------------------------------------------
@router.post("/v1/messages/count_tokens",
             openapi_extra={"requestBody": request_body(CountTokensRequest)})
async def count_tokens(raw_request: Request) -> Response:
    return await guarded(serve_count, raw_request, CountTokensRequest)


async def serve_count(tm: TokenizerManager, req: CountTokensRequest, raw_request: Request
                      ) -> Response:
    """``{"input_tokens": N}``: the prompt /v1/messages would make of the same conversation."""
    check_images(tm, req)
    chat_req = chat_request(prompt_body(req))
    return ORJSONResponse({"input_tokens": await prompt_tokens(tm, chat_req)})


async def prompt_tokens(tm: TokenizerManager, chat_req: Any) -> int:
    """The number of tokens of the prompt the chat layer makes of ``chat_req`` (its own
    validation, template and tokenization; nothing is submitted). A stream's message_start
    needs it before the chat layer's usage chunk comes, so a streamed prompt is rendered and
    tokenized twice (a cost linear in the prompt, small next to its prefill). With images, the
    count is that of the expanded prompt (one position per image embedding, as the reply's
    usage counts it): the images are read and processed for it, a second time for a stream."""
    prepared = await chat.prepare(tm, chat_req)
    ids, images = prepared.obj.input_ids, prepared.obj.image_data
    if images:
        with engine_errors():  # a bad image: the 400 the request itself would get
            ids, _ = await tm.run_tokenizer(tm.image_processor.process, ids, images)
    return len(ids)
