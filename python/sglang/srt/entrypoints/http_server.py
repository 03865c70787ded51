"""The HTTP server (FastAPI + uvicorn): the native API of the contract (sections 1-2).

Requests go to the ``TokenizerManager`` (validation, tokenization, engine I/O, detokenization);
this module only maps routes to it and shapes the replies and errors exactly as the contract says
(E1: ``{"error": {"message"}}`` 400; E2: pydantic/JSON errors rewritten to 400; E4: HTTPException).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError

from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.managers.tokenizer_manager import (
    EngineDeadError,
    ReqState,
    RequestFailed,
    TokenizerManager,
)
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger("sglang.http_server")

FLUSH_CACHE_TEXT = (
    "Cache flushed.\nPlease check backend logs for more details. (When there are running or "
    "waiting requests, the operation will not be performed.)\n"
)
HEALTH_CHECK_TIMEOUT = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", "20"))


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class _Globals:
    tm: TokenizerManager | None = None
    args: ServerArgs | None = None
    created: int = int(time.time())


G = _Globals()


def e1(message: str, status_code: int = 400) -> ORJSONResponse:
    return ORJSONResponse({"error": {"message": message}}, status_code=status_code)


def e3(message: str, kind: str = "BadRequestError", code: int = 400) -> ORJSONResponse:
    return ORJSONResponse(
        {"object": "error", "message": message, "type": kind, "param": None, "code": code},
        status_code=code,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    assert G.tm is not None
    G.tm.start_loops()
    yield
    G.tm.shutdown()


app = FastAPI(lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True,
                   allow_methods=["*"], allow_headers=["*"])


@app.exception_handler(RequestValidationError)
async def validation_error(_: Request, exc: RequestValidationError) -> ORJSONResponse:
    return ORJSONResponse(
        {"object": "error", "message": f"{exc} {exc.errors()}", "type": "Bad Request",
         "param": None, "code": 400},
        status_code=400,
    )


@app.exception_handler(HTTPException)
async def http_error(_: Request, exc: HTTPException) -> ORJSONResponse:
    return ORJSONResponse(
        {"object": "error", "message": exc.detail, "type": str(exc.status_code), "param": None,
         "code": exc.status_code},
        status_code=exc.status_code,
    )


def _tm() -> TokenizerManager:
    assert G.tm is not None
    return G.tm


# ---- generation ----------------------------------------------------------------------------------
@app.api_route("/generate", methods=["POST", "PUT"])
async def generate(request: Request) -> Response:
    # Native routes take JSON whatever the Content-Type says (curl -d sends form encoding).
    try:
        obj = GenerateReqInput.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    tm = _tm()
    try:
        states, is_list = await tm.generate(obj)
    except ValueError as exc:
        return e1(str(exc))
    except EngineDeadError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    if obj.stream:
        return StreamingResponse(_stream(tm, states, is_list), media_type="text/event-stream")
    try:
        await _wait_all(tm, states, request)
    except RequestFailed as exc:
        return e1(exc.message, exc.status_code) if exc.status_code == 400 else \
            ORJSONResponse({"object": "error", "message": exc.message,
                            "type": str(exc.status_code), "param": None,
                            "code": exc.status_code}, status_code=exc.status_code)
    finally:
        await _abort_unfinished(tm, states)
    results = [tm.response(s) for s in states]
    return ORJSONResponse(results if is_list else results[0])


async def _wait_all(tm: TokenizerManager, states: list[ReqState], request: Request) -> None:
    waiter = asyncio.ensure_future(asyncio.gather(*(tm.wait(s) for s in states)))
    try:
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.5)
            if not waiter.done() and await request.is_disconnected():
                logger.info("client disconnected; aborting %d request(s)", len(states))
                waiter.cancel()
                return
        waiter.result()
    finally:
        if not waiter.done():
            waiter.cancel()
    for s in states:
        s.raise_if_failed()


async def _abort_unfinished(tm: TokenizerManager, states: list[ReqState]) -> None:
    for s in states:
        if not s.finished:
            await tm.abort_request(s.single.rid)
        tm.release(s)


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _stream(tm: TokenizerManager, states: list[ReqState], is_list: bool
                  ) -> AsyncIterator[bytes]:
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(state: ReqState) -> None:
        try:
            async for chunk in tm.stream(state):
                if is_list:
                    chunk["index"] = state.single.index
                await queue.put(chunk)
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
                yield _sse({"error": {"message": item.message, "type": "invalid_request_error",
                                      "code": item.status_code, "retryable": False}})
                break
            else:
                yield _sse(item)
        yield b"data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        await _abort_unfinished(tm, states)


# ---- health, info, cache -------------------------------------------------------------------------
@app.get("/health")
@app.get("/health_generate")
async def health() -> Response:
    tm = _tm()
    if tm.engine_dead:
        return Response(status_code=503)
    start = time.time()
    obj = GenerateReqInput(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0})
    try:
        states, _ = await tm.generate(obj)
    except (ValueError, EngineDeadError):
        return Response(status_code=503)
    state = states[0]
    try:
        while time.time() - start < HEALTH_CHECK_TIMEOUT:
            if state.finished or tm.last_receive > start:
                return Response(status_code=503 if state.failed else 200)
            if tm.engine_dead:
                return Response(status_code=503)
            await asyncio.sleep(0.05)
        return Response(status_code=503)
    finally:
        await _abort_unfinished(tm, states)


def _model_info_old() -> dict[str, Any]:
    args = _tm().args
    return {
        "model_path": args.model_path,
        "tokenizer_path": args.tokenizer_path,
        "is_generation": not args.is_embedding,
        "preferred_sampling_params": args.preferred_sampling_params_dict,
        "weight_version": args.weight_version,
        "has_image_understanding": False,
        "has_audio_understanding": False,
    }


@app.get("/get_model_info")
async def get_model_info() -> ORJSONResponse:
    return ORJSONResponse(_model_info_old())


@app.get("/model_info")
async def model_info() -> ORJSONResponse:
    tm = _tm()
    info = _model_info_old()
    info.update({
        "served_model_name": tm.args.served_model_name,
        "load_format": tm.args.load_format,
        "reasoning_parser": tm.args.reasoning_parser,
        "tool_call_parser": tm.args.tool_call_parser,
        "disaggregation_mode": "null",
        "model_type": tm.info.model_type,
        "architectures": tm.info.architectures,
    })
    return ORJSONResponse(info)


@app.get("/get_server_info")
@app.get("/server_info")
async def get_server_info() -> ORJSONResponse:
    return ORJSONResponse(await _tm().server_info())


@app.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache() -> PlainTextResponse:
    try:
        ok = await _tm().flush_cache()
    except EngineDeadError:
        ok = False
    return PlainTextResponse(FLUSH_CACHE_TEXT, status_code=200 if ok else 400)


@app.post("/abort_request")
async def abort_request(request: Request) -> Response:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return e1("The request body is not valid JSON.")
    if not isinstance(body, dict):
        return e1("The request body must be a JSON object.")
    await _tm().abort_request(str(body.get("rid", "")), bool(body.get("abort_all", False)))
    return Response(status_code=200)


# ---- tokenizer -----------------------------------------------------------------------------------
def _max_model_len(tm: TokenizerManager) -> int:
    n = getattr(tm.tokenizer, "model_max_length", None)
    if not isinstance(n, int) or n <= 0 or n >= 2**63:
        return tm.info.context_length
    return n


async def _tokenizer_body(request: Request, tm: TokenizerManager) -> dict | ORJSONResponse:
    """The JSON object of a /tokenize or /detokenize request, or the E3 error to answer with."""
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return e3("The request body is not valid JSON.")
    if not isinstance(body, dict):
        return e3("The request body must be a JSON object.")
    if tm.tokenizer is None:
        return e3("The server runs with --skip-tokenizer-init: no tokenizer.")
    return body


@app.post("/tokenize")
@app.post("/v1/tokenize")
async def tokenize(request: Request) -> ORJSONResponse:
    tm = _tm()
    body = await _tokenizer_body(request, tm)
    if isinstance(body, ORJSONResponse):
        return body
    prompt, messages = body.get("prompt"), body.get("messages")
    if (prompt is None) == (messages is None):
        return e3("Exactly one of 'prompt' or 'messages' must be provided.")
    add_special = bool(body.get("add_special_tokens", True))
    if messages is not None:
        tokens: Any = tm.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=body.get("add_generation_prompt", True))
        if isinstance(tokens, dict) or hasattr(tokens, "input_ids"):
            tokens = list(tokens["input_ids"])
        count: Any = len(tokens)
    elif isinstance(prompt, str):
        tokens = tm.tokenizer.encode(prompt, add_special_tokens=add_special)
        count = len(tokens)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        tokens = [tm.tokenizer.encode(p, add_special_tokens=add_special) for p in prompt]
        count = [len(t) for t in tokens]
    else:
        return e3("'prompt' must be a string or a list of strings.")
    return ORJSONResponse({"tokens": tokens, "count": count, "max_model_len": _max_model_len(tm)})


@app.post("/detokenize")
@app.post("/v1/detokenize")
async def detokenize(request: Request) -> ORJSONResponse:
    tm = _tm()
    body = await _tokenizer_body(request, tm)
    if isinstance(body, ORJSONResponse):
        return body
    tokens = body.get("tokens")
    skip = bool(body.get("skip_special_tokens", True))
    if not isinstance(tokens, list):
        return e3("Invalid input: 'tokens' must be a list of integers.")
    if tokens and isinstance(tokens[0], list):
        texts = []
        for sub in tokens:
            if not isinstance(sub, list) or not all(isinstance(t, int) for t in sub):
                return e3(f"Invalid input: Sublist in 'tokens' must contain only integers. "
                          f"Found: {sub}")
            texts.append(tm.tokenizer.decode(sub, skip_special_tokens=skip))
        return ORJSONResponse({"text": texts})
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        return e3("Invalid input: 'tokens' must be a list of integers.")
    text = tm.tokenizer.decode(tokens, skip_special_tokens=skip) if tokens else ""
    return ORJSONResponse({"text": text})


# ---- OpenAI model list ---------------------------------------------------------------------------
def _model_card() -> dict[str, Any]:
    tm = _tm()
    name = tm.args.served_model_name
    return {"id": name, "object": "model", "created": G.created, "owned_by": "sglang",
            "root": name, "parent": None, "max_model_len": tm.info.context_length}


@app.get("/v1/models")
async def list_models() -> ORJSONResponse:
    return ORJSONResponse({"object": "list", "data": [_model_card()]})


@app.get("/v1/models/{model:path}")
async def get_model(model: str) -> ORJSONResponse:
    card = _model_card()
    if model != card["id"]:
        return ORJSONResponse(
            {"error": {"message": f"The model '{model}' does not exist",
                       "type": "invalid_request_error", "param": "model",
                       "code": "model_not_found"}},
            status_code=404,
        )
    return ORJSONResponse(card)


# ---- start-up ------------------------------------------------------------------------------------
def _warmup(args: ServerArgs) -> None:
    import requests

    url = f"http://{args.host}:{args.port}"
    for _ in range(600):
        try:
            if requests.get(f"{url}/get_model_info", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    try:
        payload: dict[str, Any] = {"sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        if args.skip_tokenizer_init:
            payload["input_ids"] = [10, 11, 12]
        else:
            payload["text"] = "The capital city of France is"
        requests.post(f"{url}/generate", json=payload, timeout=600)
        logger.info("The server is fired up and ready to roll!")
    except requests.RequestException as exc:
        logger.warning("warm-up request failed: %s", exc)


def launch_server(server_args: ServerArgs) -> None:
    import uvicorn

    logging.basicConfig(
        level=getattr(logging, server_args.log_level.upper(), logging.INFO),
        format="[%(asctime)s] %(message)s",
    )
    G.args = server_args
    G.tm = TokenizerManager(server_args)
    if not server_args.skip_server_warmup:
        threading.Thread(target=_warmup, args=(server_args,), daemon=True).start()
    try:
        uvicorn.run(app, host=server_args.host, port=server_args.port,
                    log_level=server_args.log_level_http, timeout_keep_alive=5, loop="asyncio")
    finally:
        G.tm.shutdown()
