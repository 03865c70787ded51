"""What every HTTP route shares: JSON replies, the contract's error shapes, body parsing, waiting
for and streaming the states of submitted requests.

The native routes (``http_server``) and the OpenAI and Anthropic layers (``openai/``,
``anthropic/``) all submit the same internal request (``GenerateReqInput``) to the one
``TokenizerManager``; they differ only in how they translate the body and shape the reply.
"""

from __future__ import annotations

import asyncio
import logging
import reprlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pydantic_core
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from sglang.srt.entrypoints.http_guards import error_body
from sglang.srt.managers.tokenizer_manager import ReqState, RequestFailed, TokenizerManager

logger = logging.getLogger("sglang.http_server")

RETRY_AFTER_S = "1"
MAX_ERROR_MESSAGE_CHARS = 2000
MAX_ERROR_INPUT_CHARS = 200


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def tm_of(request: Request) -> TokenizerManager:
    """The server's TokenizerManager (set on the app by ``launch_server``)."""
    return request.app.state.tm


# ---- error replies -------------------------------------------------------------------------------
def retry_headers(status_code: int) -> dict[str, str] | None:
    return {"Retry-After": RETRY_AFTER_S} if status_code == 503 else None


def e1(message: str, status_code: int = 400) -> ORJSONResponse:
    """E1: the native routes' ``{"error": {"message"}}``."""
    return ORJSONResponse({"error": {"message": message}}, status_code=status_code,
                          headers=retry_headers(status_code))


def e3_body(message: str, kind: str = "BadRequestError", code: int = 400) -> dict[str, Any]:
    return {"object": "error", "message": message[:MAX_ERROR_MESSAGE_CHARS], "type": kind,
            "param": None, "code": code}


def e3(message: str, kind: str = "BadRequestError", code: int = 400) -> ORJSONResponse:
    """E3: the OpenAI handlers' error object."""
    return ORJSONResponse(e3_body(message, kind, code), status_code=code,
                          headers=retry_headers(code))


def e4(message: str, code: int) -> ORJSONResponse:
    """E4: an HTTPException's error object."""
    return ORJSONResponse(error_body(message, code), status_code=code,
                          headers=retry_headers(code))


def failed_reply(exc: RequestFailed) -> ORJSONResponse:
    """A request that failed: E1 for a 400, E4 otherwise (with Retry-After for a 503)."""
    return e1(exc.message) if exc.status_code == 400 else e4(exc.message, exc.status_code)


def stream_error(message: str, status_code: int) -> dict[str, Any]:
    """The E8 event of a stream that fails after its headers were sent."""
    client_fault = status_code < 500
    return {"error": {"message": message,
                      "type": "invalid_request_error" if client_fault else "server_error",
                      "code": status_code, "retryable": not client_fault}}


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 5, 5, 60, 60


def _short(value: Any) -> str:
    """A bounded repr, cheap whatever the size or depth of ``value``."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_ERROR_INPUT_CHARS else text[:MAX_ERROR_INPUT_CHARS] + "..."


def validation_message(errors: list[dict[str, Any]]) -> str:
    """A bounded description of parse errors: each error's location, message and (cut) input,
    so a huge or deeply nested body is never echoed back."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        part = f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", ""))
        if "input" in err:
            part += f" (input: {_short(err['input'])})"
        parts.append(part)
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more errors")
    message = f"{len(errors)} validation error(s): " + "; ".join(parts)
    return message[:MAX_ERROR_MESSAGE_CHARS]


# ---- request bodies ------------------------------------------------------------------------------
async def parse_json(request: Request) -> Any:
    """The JSON body, whatever the Content-Type (curl -d sends form encoding); RequestValidationError
    (E2) for bad JSON, nesting deeper than the parser's limit of about 200 levels included."""
    try:
        return pydantic_core.from_json(await request.body(), allow_inf_nan=False)
    except ValueError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",),
                                       "msg": f"JSON decode error: {exc}"}]) from None


async def parse_body(request: Request, model: type[BaseModel],
                     context: dict[str, Any] | None = None) -> Any:
    """The JSON body as ``model``; RequestValidationError (E2) for bad JSON or wrong types."""
    data = await parse_json(request)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def is_json_request(request: Request) -> bool:
    """The OpenAI routes' media-type check (contract 1.1): ``application/json``, any case,
    parameters after ``;`` ignored."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json"


# ---- waiting and streaming -----------------------------------------------------------------------
async def wait_all(tm: TokenizerManager, states: list[ReqState], request: Request) -> bool:
    """Waits until every state finished; False when the client disconnected first (the route
    then aborts them). RequestFailed for the first state that failed."""
    waiter = asyncio.ensure_future(asyncio.gather(*(tm.wait(s) for s in states)))
    try:
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.5)
            if not waiter.done() and await request.is_disconnected():
                logger.info("client disconnected; aborting %d request(s)", len(states))
                waiter.cancel()
                return False
        waiter.result()
    finally:
        if not waiter.done():
            waiter.cancel()
    for s in states:
        s.raise_if_failed()
    return True


async def encode_states(tm: TokenizerManager, obj: Any, request: Request
                        ) -> tuple[list[ReqState], bool]:
    """Submits an embedding request (``EmbeddingReqInput``) and waits for every input's vector;
    returns the finished states and whether the reply is a list. ValueError / RequestFailed /
    EngineDeadError as ``TokenizerManager.encode`` and ``wait_all`` raise them."""
    states, is_list = await tm.encode(obj)
    try:
        await wait_all(tm, states, request)
    finally:
        await abort_unfinished(tm, states)
    return states, is_list


async def abort_unfinished(tm: TokenizerManager, states: list[ReqState]) -> None:
    """Aborts what has not finished and forgets every state (routes call it in ``finally``)."""
    for s in states:
        if not s.finished:
            await tm.abort_request(s.rid)
        tm.release(s)


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def merged(tm: TokenizerManager, states: list[ReqState]
                 ) -> AsyncIterator[tuple[ReqState, dict[str, Any]]]:
    """The chunks of all ``states`` (``/generate`` objects, see ``TokenizerManager.stream``) as
    they come, each with its state; raises RequestFailed when one fails. The caller aborts and
    releases the states (``abort_unfinished``) when it is done."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(state: ReqState) -> None:
        try:
            async for chunk in tm.stream(state):
                await queue.put((state, chunk))
        except RequestFailed as exc:
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(s)) for s in states]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, RequestFailed):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
