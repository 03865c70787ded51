"""The HTTP server (FastAPI + uvicorn): the native API of the contract (sections 1-2).

Every request first passes the guards of ``http_guards`` (API keys, body size). Routes parse their
body into a typed request (``io_struct``), hand it to the ``TokenizerManager`` (validation,
tokenization, engine I/O, detokenization) and shape the reply and the errors exactly as the
contract says (E1: ``{"error": {"message"}}`` 400; E2: parse errors rewritten to a bounded 400;
E4: HTTPException; a 503 carries ``Retry-After``). Nothing a client sends reaches a plain-text 500:
an unexpected exception is a JSON 500 and the server keeps serving. When the engine process dies
the server exits non-zero (a supervisor restarts it) or, with ``--engine-restart``, restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

import sglang
from sglang.srt.entrypoints.anthropic import messages as anthropic_messages
from sglang.srt.entrypoints.http_common import (
    MAX_ERROR_MESSAGE_CHARS,
    SSE_DONE,
    ORJSONResponse,
    abort_unfinished,
    e1,
    e3,
    e4,
    encode_states,
    failed_reply,
    merged,
    parse_body,
    retry_headers,
    sse,
    stream_error,
    validation_message,
    wait_all,
)
from sglang.srt.entrypoints.http_guards import ApiKeyGuard, BodyLimitGuard, admin_optional
from sglang.srt.entrypoints.openai import routes as openai_routes
from sglang.srt.entrypoints.openapi import (
    body_schema,
    generate_body_schema,
    specialize_for_model,
)
from sglang.srt.managers.io_struct import (
    AbortReqInput,
    DetokenizeReqInput,
    EmbeddingReqInput,
    GenerateReqInput,
    LoadLoRAAdapterReqInput,
    LoraAdapterResp,
    TokenizeReqInput,
    UnloadLoRAAdapterReqInput,
    UpdateWeightFromDiskReqInput,
)
from sglang.srt.managers.tokenizer_manager import (
    EngineDeadError,
    ReqState,
    RequestFailed,
    TokenizerManager,
)
from sglang.srt.server_args import LOAD_FORMATS, ServerArgs

logger = logging.getLogger("sglang.http_server")

FLUSH_CACHE_TEXT = (
    "Cache flushed.\nPlease check backend logs for more details. (When there are running or "
    "waiting requests, the operation will not be performed.)\n"
)
HEALTH_CHECK_TIMEOUT = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", "20"))
GRACEFUL_SHUTDOWN_S = 5


class _Globals:
    tm: TokenizerManager | None = None
    args: ServerArgs | None = None
    server: Any = None  # the uvicorn.Server
    exit_code: int = 0
    created: int = int(time.time())


G = _Globals()


# ---- app -----------------------------------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    assert G.tm is not None
    G.tm.start_loops()
    G.tm.on_engine_death_hooks.append(_on_engine_death)
    yield
    G.tm.shutdown()


app = FastAPI(lifespan=lifespan)


def configure_app(args: ServerArgs) -> None:
    """Installs the guards (outermost last: CORS, then keys, then the body limit)."""
    app.add_middleware(BodyLimitGuard, max_bytes=args.max_request_body_bytes)
    app.add_middleware(ApiKeyGuard, api_key=args.api_key, admin_api_key=args.admin_api_key,
                       routes=lambda: app.router.routes)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    if args.enable_metrics:
        app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=True)
    app.openapi = _openapi


def _openapi() -> dict[str, Any]:
    """FastAPI's schema, with the served model's vocabulary and hidden size in /generate's."""
    if app.openapi_schema is None:
        schema = get_openapi(title="sglang", version=sglang.__version__, routes=app.routes)
        specialize_for_model(schema, _tm().info.vocab_size, _tm().info.hidden_size)
        app.openapi_schema = schema
    return app.openapi_schema


@app.exception_handler(RequestValidationError)
async def validation_error(_: Request, exc: RequestValidationError) -> ORJSONResponse:
    return ORJSONResponse(
        {"object": "error", "message": validation_message(list(exc.errors())),
         "type": "Bad Request", "param": None, "code": 400},
        status_code=400,
    )


@app.exception_handler(HTTPException)
async def http_error(_: Request, exc: HTTPException) -> ORJSONResponse:
    return e4(str(exc.detail), exc.status_code)


@app.exception_handler(Exception)
async def internal_error(request: Request, exc: Exception) -> ORJSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    return e3(f"Internal server error: {type(exc).__name__}: {exc}"[:MAX_ERROR_MESSAGE_CHARS],
              "InternalServerError", 500)


def refusal(exc: Exception) -> ORJSONResponse:
    """The native reply for what submitting a request raised: a 400 for an invalid request, the
    failed request's own status, a 503 while the engine is down."""
    if isinstance(exc, RequestFailed):
        return failed_reply(exc)
    if isinstance(exc, EngineDeadError):
        return e4(str(exc), 503)
    return e1(str(exc))


def _tm() -> TokenizerManager:
    assert G.tm is not None
    return G.tm


# ---- generation ----------------------------------------------------------------------------------
@app.api_route("/generate", methods=["POST", "PUT"],
               openapi_extra={"requestBody": generate_body_schema()})
async def generate(request: Request) -> Response:
    tm = _tm()
    obj = await parse_body(request, GenerateReqInput,
                           {"max_batch_size": tm.args.max_batch_size})
    try:
        states, is_list = await tm.generate(obj)
    except (ValueError, RequestFailed, EngineDeadError) as exc:
        return refusal(exc)
    if obj.stream:
        return StreamingResponse(_stream(tm, states, is_list), media_type="text/event-stream")
    try:
        await wait_all(tm, states, request)
    except RequestFailed as exc:
        return failed_reply(exc)
    finally:
        await abort_unfinished(tm, states)
    results = [tm.response(s) for s in states]
    return ORJSONResponse(results if is_list else results[0])


async def _stream(tm: TokenizerManager, states: list[ReqState], is_list: bool
                  ) -> AsyncIterator[bytes]:
    try:
        async for state, chunk in merged(tm, states):
            if is_list:
                chunk["index"] = state.single.index
            yield sse(chunk)
    except RequestFailed as exc:
        yield sse(stream_error(exc.message, exc.status_code))
    finally:
        await abort_unfinished(tm, states)
    yield SSE_DONE


# ---- embeddings ----------------------------------------------------------------------------------
@app.api_route("/encode", methods=["POST", "PUT"],
               openapi_extra={"requestBody": body_schema(EmbeddingReqInput)})
@app.api_route("/classify", methods=["POST", "PUT"],
               openapi_extra={"requestBody": body_schema(EmbeddingReqInput)})
async def encode(request: Request) -> Response:
    """Embeddings of one input or a batch (an --is-embedding server); /classify on a reward or
    classification model: the score head's logits (a reward at ``embedding[0]``)."""
    tm = _tm()
    obj = await parse_body(request, EmbeddingReqInput, {"max_batch_size": tm.args.max_batch_size})
    try:
        states, is_list = await encode_states(tm, obj, request)
    except (ValueError, RequestFailed, EngineDeadError) as exc:
        return refusal(exc)
    results = [tm.embedding_response(s) for s in states]
    return ORJSONResponse(results if is_list else results[0])


# ---- health, info, cache -------------------------------------------------------------------------
@app.get("/health")
@app.get("/health_generate")
async def health() -> Response:
    """200 once the engine answers a one-token request (a refusal for a full queue counts:
    the engine is alive), 503 while the server warms up, and when the engine is down,
    restarting or silent for the timeout."""
    tm = _tm()
    if tm.status != "ready" or tm.engine_dead:
        return Response(status_code=503, headers=retry_headers(503))
    start = time.time()
    try:
        if tm.info.is_embedding:
            states, _ = await tm.encode(EmbeddingReqInput(input_ids=[0]), internal=True)
        else:
            obj = GenerateReqInput(input_ids=[0],
                                   sampling_params={"max_new_tokens": 1, "temperature": 0})
            states, _ = await tm.generate(obj, internal=True)
    except (ValueError, EngineDeadError, RequestFailed):
        return Response(status_code=503, headers=retry_headers(503))
    state = states[0]
    try:
        while time.time() - start < HEALTH_CHECK_TIMEOUT:
            if state.finished or tm.last_receive > start:
                broken = state.failed and state.finish_reason.status_code != 503
                return Response(status_code=503 if broken else 200)
            if tm.engine_dead:
                return Response(status_code=503)
            await asyncio.sleep(0.05)
        return Response(status_code=503)
    finally:
        await abort_unfinished(tm, states)


@app.get("/ready")
async def ready() -> Response:
    """200 while the engine can take requests (no generation), 503 while the server warms up
    and while the engine is down or restarting."""
    tm = _tm()
    ok = tm.status == "ready" and not tm.engine_dead
    return Response(status_code=200 if ok else 503, headers=None if ok else retry_headers(503))


def _model_info_old() -> dict[str, Any]:
    args = _tm().args
    return {
        "model_path": args.model_path,
        "tokenizer_path": args.tokenizer_path,
        "is_generation": not args.is_embedding,
        "preferred_sampling_params": args.preferred_sampling_params_dict,
        "weight_version": args.weight_version,
        "has_image_understanding": _tm().image_processor is not None,
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
@admin_optional
async def flush_cache() -> PlainTextResponse:
    try:
        ok = await _tm().flush_cache()
    except (EngineDeadError, asyncio.TimeoutError):
        ok = False
    return PlainTextResponse(FLUSH_CACHE_TEXT, status_code=200 if ok else 400)


@app.post("/update_weights_from_disk",
          openapi_extra={"requestBody": body_schema(UpdateWeightFromDiskReqInput)})
@admin_optional
async def update_weights_from_disk(request: Request) -> ORJSONResponse:
    """Contract 2.6: ``{"success", "message", "num_paused_requests"}``, 200 or 400."""
    tm = _tm()
    obj = await parse_body(request, UpdateWeightFromDiskReqInput)
    try:
        obj.check(LOAD_FORMATS)
        success, message, paused = await tm.update_weights_from_disk(obj)
    except ValueError as exc:
        success, message, paused = False, str(exc), 0
    except (EngineDeadError, asyncio.TimeoutError) as exc:
        return e4(f"The engine cannot update weights: {exc or type(exc).__name__}", 503)
    return ORJSONResponse({"success": success, "message": message,
                           "num_paused_requests": paused}, status_code=200 if success else 400)


@app.get("/get_weight_version")
@app.get("/weight_version")
async def get_weight_version() -> ORJSONResponse:
    return ORJSONResponse({"weight_version": _tm().args.weight_version})


EXPERT_RECORD_TEXTS = {
    "start": "Start recording the expert distribution.\n",
    "stop": "Stop recording the expert distribution.\n",
    "dump": "Dump expert distribution record.\n",
}


def _expert_record_route(action: str) -> Any:
    async def route() -> Response:
        try:
            await _tm().expert_distribution(action)
        except ValueError as exc:
            return e1(str(exc))
        except (EngineDeadError, asyncio.TimeoutError) as exc:
            return e4(f"The engine did not answer: {exc or type(exc).__name__}", 503)
        return PlainTextResponse(EXPERT_RECORD_TEXTS[action])

    route.__name__ = f"{action}_expert_distribution_record"
    return admin_optional(route)


for _action in EXPERT_RECORD_TEXTS:
    app.api_route(f"/{_action}_expert_distribution_record",
                  methods=["GET", "POST"])(_expert_record_route(_action))


@app.post("/abort_request", openapi_extra={"requestBody": body_schema(AbortReqInput)})
@admin_optional
async def abort_request(request: Request) -> Response:
    body = await parse_body(request, AbortReqInput)
    await _tm().abort_request(body.rid, body.abort_all)
    return Response(status_code=200)


async def metrics() -> Response:
    """Prometheus metrics (mounted with --enable-metrics)."""
    data, content_type = await _tm().metrics_text()
    return Response(data, media_type=content_type)


# ---- tokenizer -----------------------------------------------------------------------------------
def _max_model_len(tm: TokenizerManager) -> int:
    n = getattr(tm.tokenizer, "model_max_length", None)
    if not isinstance(n, int) or n <= 0 or n >= 2**63:
        return tm.info.context_length
    return n


@app.post("/tokenize", openapi_extra={"requestBody": body_schema(TokenizeReqInput)})
@app.post("/v1/tokenize", openapi_extra={"requestBody": body_schema(TokenizeReqInput)})
async def tokenize(request: Request) -> ORJSONResponse:
    tm = _tm()
    body = await parse_body(request, TokenizeReqInput)
    if tm.tokenizer is None:
        return e3("The server runs with --skip-tokenizer-init: no tokenizer.")
    try:
        body.check()
        for text in body.texts():
            tm.validator.check_text(text)
        tokens, count = await tm.run_tokenizer(_tokenize, tm.tokenizer, body)
    except ValueError as exc:
        return e3(str(exc))
    return ORJSONResponse({"tokens": tokens, "count": count, "max_model_len": _max_model_len(tm)})


def _tokenize(tokenizer: Any, body: TokenizeReqInput) -> tuple[Any, Any]:
    """(tokens, count) of a /tokenize request; ValueError for a chat the template rejects."""
    if body.messages is not None:
        try:
            tokens: Any = tokenizer.apply_chat_template(
                body.chat(), tokenize=True, add_generation_prompt=body.add_generation_prompt)
        except Exception as exc:  # jinja errors, missing keys: the client's messages
            raise ValueError(f"The chat template cannot render these messages: "
                             f"{type(exc).__name__}: {exc}") from None
        if isinstance(tokens, dict) or hasattr(tokens, "input_ids"):
            tokens = list(tokens["input_ids"])
        return tokens, len(tokens)
    if isinstance(body.prompt, str):
        tokens = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return tokens, len(tokens)
    lists = [tokenizer.encode(p, add_special_tokens=body.add_special_tokens)
             for p in body.prompt]
    return lists, [len(t) for t in lists]


@app.post("/detokenize", openapi_extra={"requestBody": body_schema(DetokenizeReqInput)})
@app.post("/v1/detokenize", openapi_extra={"requestBody": body_schema(DetokenizeReqInput)})
async def detokenize(request: Request) -> ORJSONResponse:
    tm = _tm()
    try:
        body = await parse_body(request, DetokenizeReqInput)
    except RequestValidationError as exc:
        if any("tokens" in str(e.get("loc", ())) + str(e.get("msg", "")) for e in exc.errors()):
            return e3("Invalid input: 'tokens' must be a list of integers.")
        raise
    if tm.tokenizer is None:
        return e3("The server runs with --skip-tokenizer-init: no tokenizer.")
    try:
        for ids in body.token_lists():
            tm.validator.check_token_ids("tokens: token id", ids)
    except ValueError as exc:
        return e3(str(exc))

    def decode() -> Any:
        texts = [tm.tokenizer.decode(ids, skip_special_tokens=body.skip_special_tokens)
                 if ids else "" for ids in body.token_lists()]
        return texts if body.is_batch() else texts[0]

    return ORJSONResponse({"text": await tm.run_detokenizer(decode)})


# ---- LoRA adapters -------------------------------------------------------------------------------
@app.post("/load_lora_adapter",
          openapi_extra={"requestBody": body_schema(LoadLoRAAdapterReqInput)})
@admin_optional
async def load_lora_adapter(request: Request) -> ORJSONResponse:
    """``{"success", "error_message", "loaded_adapters": {name: path}}``, 200 or 400."""
    obj = await parse_body(request, LoadLoRAAdapterReqInput)
    if obj.pinned:
        return _lora_reply(LoraAdapterResp(False, "pinned: adapters cannot be pinned to a slot "
                                           "(not supported).", _tm().lora_adapters))
    return await _lora_update(_tm().load_lora_adapter(obj.lora_name, obj.lora_path))


@app.post("/unload_lora_adapter",
          openapi_extra={"requestBody": body_schema(UnloadLoRAAdapterReqInput)})
@admin_optional
async def unload_lora_adapter(request: Request) -> ORJSONResponse:
    obj = await parse_body(request, UnloadLoRAAdapterReqInput)
    return await _lora_update(_tm().unload_lora_adapter(obj.lora_name))


async def _lora_update(update: Any) -> ORJSONResponse:
    try:
        reply = await update
    except (EngineDeadError, asyncio.TimeoutError) as exc:
        return e4(f"The engine cannot update LoRA adapters: {exc or type(exc).__name__}", 503)
    return _lora_reply(reply)


def _lora_reply(reply: LoraAdapterResp) -> ORJSONResponse:
    return ORJSONResponse({"success": reply.success, "error_message": reply.error_message,
                           "loaded_adapters": reply.loaded_adapters},
                          status_code=200 if reply.success else 400)


# ---- OpenAI model list ---------------------------------------------------------------------------
def _model_cards() -> list[dict[str, Any]]:
    """The served model, then one card per loaded LoRA adapter (``parent``: the base)."""
    tm = _tm()
    name = tm.args.served_model_name
    cards = [{"id": name, "object": "model", "created": G.created, "owned_by": "sglang",
              "root": name, "parent": None, "max_model_len": tm.info.context_length}]
    for adapter, path in tm.lora_adapters.items():
        cards.append({"id": adapter, "object": "model", "created": G.created,
                      "owned_by": "sglang", "root": path, "parent": name, "max_model_len": None})
    return cards


@app.get("/v1/models")
async def list_models() -> ORJSONResponse:
    return ORJSONResponse({"object": "list", "data": _model_cards()})


@app.get("/v1/models/{model:path}")
async def get_model(model: str) -> ORJSONResponse:
    card = next((c for c in _model_cards() if c["id"] == model), None)
    if card is None:
        return ORJSONResponse(
            {"error": {"message": f"The model '{model}' does not exist",
                       "type": "invalid_request_error", "param": "model",
                       "code": "model_not_found"}},
            status_code=404,
        )
    return ORJSONResponse(card)


app.include_router(openai_routes.router)
app.include_router(anthropic_messages.router)


# ---- engine death --------------------------------------------------------------------------------
def _on_engine_death() -> None:
    """Pending requests have failed; restart the engine (--engine-restart) or shut down with an
    error, so that a supervisor (systemd, Kubernetes) restarts the server."""
    if G.args is not None and G.args.engine_restart:
        logger.error("the engine process died; restarting it (--engine-restart)")
        asyncio.ensure_future(_restart_engine())
    else:
        logger.error("the engine process died; the server exits (use --engine-restart to "
                     "restart the engine instead)")
        _shut_down(1)


async def _restart_engine() -> None:
    try:
        await _tm().restart_engine()
        logger.info("the engine process was restarted (%d restart(s) so far)",
                    _tm().engine_restarts)
    except Exception:
        logger.exception("the engine could not be restarted; the server exits")
        _shut_down(1)


def _shut_down(exit_code: int) -> None:
    G.exit_code = exit_code
    if G.server is not None:
        G.server.should_exit = True


# ---- start-up ------------------------------------------------------------------------------------
def _warmup(args: ServerArgs) -> None:
    import requests

    url = f"http://{args.host}:{args.port}"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    for _ in range(600):
        try:
            if requests.get(f"{url}/get_model_info", headers=headers,
                            timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    try:
        payload: dict[str, Any] = {}
        if not args.is_embedding:
            payload["sampling_params"] = {"max_new_tokens": 8, "temperature": 0}
        if args.skip_tokenizer_init:
            payload["input_ids"] = [10, 11, 12]
        else:
            payload["text"] = "The capital city of France is"
        route = "/encode" if args.is_embedding else "/generate"
        r = requests.post(f"{url}{route}", json=payload, headers=headers, timeout=600)
        if r.status_code == 200:
            logger.info("The server is fired up and ready to roll!")
        else:
            logger.warning("warm-up request failed: HTTP %d %s", r.status_code, r.text[:200])
    except requests.RequestException as exc:
        logger.warning("warm-up request failed: %s", exc)
    finally:
        G.tm.warm()  # health checks pass from now on


def launch_server(server_args: ServerArgs) -> int:
    """Serves until stopped; returns the process exit code (1 when the engine died). A node
    with ``--node-rank > 0`` runs its tensor-parallel ranks instead (``worker_node.py``)."""
    if server_args.node_rank > 0:
        from sglang.srt.managers.worker_node import run_worker_node

        return run_worker_node(server_args)
    import uvicorn

    logging.basicConfig(
        level=getattr(logging, server_args.log_level.upper(), logging.INFO),
        format="[%(asctime)s] %(message)s",
    )
    G.args = server_args
    G.tm = TokenizerManager(server_args)
    app.state.tm = G.tm
    configure_app(server_args)
    if not server_args.skip_server_warmup:
        G.tm.warming_up()
        threading.Thread(target=_warmup, args=(server_args,), daemon=True).start()
    config = uvicorn.Config(app, host=server_args.host, port=server_args.port,
                            log_level=server_args.log_level_http, timeout_keep_alive=5,
                            loop="asyncio", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    G.server = uvicorn.Server(config)
    try:
        G.server.run()
    finally:
        G.tm.shutdown()
    return G.exit_code
