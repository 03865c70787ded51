"""What the OpenAI routes share: the error type and reply (E3), submitting the internal request,
the sampling fields both request kinds carry, finish reasons, usage and ids.

A serving module (``completions``, ``chat``, ``embeddings``) exposes, for its request model:
``async def create_*(tm, req, raw_request) -> dict`` (the non-streaming reply) and
``async def start_*_stream(tm, req, raw_request) -> AsyncIterator[dict]`` which validates and
submits *before* it returns (so a bad request is an ``OpenAIError`` and a plain 400), then yields
the chunk objects (the route frames them as SSE; a ``RequestFailed`` raised mid-stream becomes
the E9 event). ``routes`` maps the URLs to them.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import Request

from sglang.srt.entrypoints.http_common import ORJSONResponse, e3, e3_body
from sglang.srt.managers.io_struct import IS_GENERATION_NEEDED, GenerateReqInput
from sglang.srt.managers.tokenizer_manager import (
    EngineDeadError,
    ReqState,
    RequestFailed,
    TokenizerManager,
)


class OpenAIError(Exception):
    """A request the OpenAI layer refuses: rendered as E3 with ``status_code``."""

    def __init__(self, message: str, status_code: int = 400, kind: str = "BadRequestError"
                 ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.kind = kind

    @classmethod
    def of(cls, exc: RequestFailed) -> OpenAIError:
        return cls(exc.message, exc.status_code, _kind(exc.status_code))

    def response(self) -> ORJSONResponse:
        return e3(self.message, self.kind, self.status_code)

    def body(self) -> dict[str, Any]:
        return e3_body(self.message, self.kind, self.status_code)


def _kind(status_code: int) -> str:
    return {400: "BadRequestError", 413: "RequestTooLarge", 429: "TooManyRequests",
            503: "ServiceUnavailable"}.get(status_code, "InternalServerError"
                                           if status_code >= 500 else "BadRequestError")


def stream_error_event(exc: RequestFailed) -> dict[str, Any]:
    """E9: ``{"error": {<E3 object>}}``, sent when a stream fails after it started."""
    return {"error": OpenAIError.of(exc).body()}


def check_generation_server(tm: TokenizerManager) -> None:
    """A generation route on an --is-embedding server is a 400 before any other rule."""
    if tm.info.is_embedding:
        raise OpenAIError(IS_GENERATION_NEEDED)


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """What the engine path refuses, as OpenAIError: validation 400, a failed request its own
    status, the engine down 503."""
    try:
        yield
    except ValueError as exc:
        raise OpenAIError(str(exc)) from None
    except RequestFailed as exc:
        raise OpenAIError.of(exc) from None
    except EngineDeadError as exc:
        raise OpenAIError(str(exc), 503, "ServiceUnavailable") from None


async def submit(tm: TokenizerManager, obj: GenerateReqInput) -> list[ReqState]:
    """Submits the internal request (``engine_errors`` for what the engine path refuses)."""
    with engine_errors():
        states, _ = await tm.generate(obj)
    return states


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> int:
    return int(time.time())


# ---- sampling --------------------------------------------------------------------------------------
# Request fields copied into sampling_params under the same name when the request sets them.
SAME_NAME_FIELDS = ("temperature", "top_p", "top_k", "min_p", "frequency_penalty",
                    "presence_penalty", "repetition_penalty", "stop", "stop_token_ids",
                    "stop_regex", "ignore_eos", "skip_special_tokens", "no_stop_trim", "regex",
                    "json_schema", "ebnf", "logit_bias", "custom_params", "n")


def lora_adapter(tm: TokenizerManager, model: str | None, lora_path: Any) -> Any:
    """The LoRA adapter a request names: its ``lora_path`` (SGLang's extra field), else, on a
    server with LoRA enabled, the ``adapter`` of ``"model": "base:adapter"``; None for the base
    model. Without LoRA a ``model`` with a colon is just a name (``llama3:8b``): model names are
    not checked."""
    if lora_path is not None:
        return lora_path
    if tm.info.lora_enabled and isinstance(model, str) and ":" in model:
        return model.split(":", 1)[1] or None
    return None


def sampling_params(req: Any, max_new_tokens: int | None,
                    defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The internal ``sampling_params`` of an OpenAI request: the fields it sets (``None`` means
    unset), over ``defaults`` (chat: ``--sampling-defaults``); ``seed`` -> ``sampling_seed``,
    ``min_tokens`` -> ``min_new_tokens``."""
    params: dict[str, Any] = dict(defaults or {})
    for name in SAME_NAME_FIELDS:
        value = getattr(req, name, None)
        if value is not None:
            params[name] = value
    if getattr(req, "min_tokens", None):
        params["min_new_tokens"] = req.min_tokens
    if getattr(req, "seed", None) is not None:
        params["sampling_seed"] = req.seed
    params["max_new_tokens"] = max_new_tokens
    return params


# ---- replies ---------------------------------------------------------------------------------------
def finish_reason(state: ReqState) -> tuple[str | None, int | str | None]:
    """(``finish_reason``, ``matched_stop``) of a state: stop / length / abort, or (None, None)
    while it runs."""
    finish = state.finish_reason
    if finish is None:
        return None, None
    data = finish.to_json()
    kind = data["type"]
    return kind, data.get("matched") if kind == "stop" else None


def usage(tm: TokenizerManager, states: list[ReqState]) -> dict[str, Any]:
    """The ``usage`` object: a prompt counted once however many choices it has (n > 1), every
    completion token counted; ``cached_tokens`` with ``--enable-cache-report``."""
    prompts: dict[int, ReqState] = {}
    for s in states:
        prompts.setdefault(s.single.prompt_index, s)
    prompt_tokens = sum(s.prompt_tokens for s in prompts.values())
    completion_tokens = sum(len(s.output_ids) for s in states)
    details = None
    if tm.args.enable_cache_report:
        details = {"cached_tokens": sum(s.cached_tokens for s in prompts.values())}
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": details,
            "reasoning_tokens": 0, "completion_tokens_details": None}


def metadata(tm: TokenizerManager) -> dict[str, Any]:
    return {"weight_version": tm.args.weight_version}


def include_usage(tm: TokenizerManager, stream_options: Any) -> bool:
    """Whether a stream ends with a usage chunk: ``stream_options.include_usage``, else
    ``--stream-response-default-include-usage``."""
    if stream_options is not None and stream_options.include_usage is not None:
        return bool(stream_options.include_usage)
    return bool(tm.args.stream_response_default_include_usage)


def check_media_type(raw_request: Request) -> None:
    """Contract 1.1: the OpenAI routes take ``application/json`` only (E2 otherwise)."""
    from fastapi.exceptions import RequestValidationError

    from sglang.srt.entrypoints.http_common import is_json_request

    if not is_json_request(raw_request):
        raise RequestValidationError([{
            "type": "value_error", "loc": ("header", "content-type"),
            "msg": "Unsupported Media Type: Only 'application/json' is allowed"}])


# ---- routes ----------------------------------------------------------------------------------------
async def serve(raw_request: Request, model: type, create: Any, start_stream: Any) -> Any:
    """One OpenAI route: media type, body (E2), then the non-streaming reply or the SSE stream;
    an OpenAIError before the stream starts is a plain E3 reply."""
    from fastapi.responses import StreamingResponse

    from sglang.srt.entrypoints.http_common import parse_body, tm_of

    check_media_type(raw_request)
    req = await parse_body(raw_request, model)
    tm = tm_of(raw_request)
    try:
        if getattr(req, "stream", False):
            chunks = await start_stream(tm, req, raw_request)
            return StreamingResponse(sse_events(chunks), media_type="text/event-stream")
        return ORJSONResponse(await create(tm, req, raw_request))
    except OpenAIError as exc:
        return exc.response()


async def sse_events(chunks: Any) -> Any:
    """Frames chunk objects as SSE; a failure mid-stream is the E9 event; ``[DONE]`` ends it."""
    from sglang.srt.entrypoints.http_common import SSE_DONE, sse

    try:
        async for chunk in chunks:
            yield sse(chunk)
    except RequestFailed as exc:
        yield sse(stream_error_event(exc))
    except OpenAIError as exc:
        yield sse({"error": exc.body()})
    finally:
        await chunks.aclose()
    yield SSE_DONE
