"""``/v1/completions`` (contract 5.1): the legacy OpenAI text-completion API.

The body (``CompletionRequest``) is checked here for the OpenAI-only rules (prompt shape, ``n``,
``max_tokens``, ``logprobs``, ``suffix``, ``stream_options``), then translated into the one
internal request, ``GenerateReqInput``, whose validation (sampling ranges, fields the server does
not support such as ``lora_path``) answers the rest with a 400. The replies are shaped from the
``/generate`` objects of the submitted states (``tm.response`` or the chunks of ``merged``):
choices in the engine's prompt-major order (prompt ``i``, sample ``j`` is choice ``i * n + j``),
logprobs in the legacy ``{"text_offset", "token_logprobs", "tokens", "top_logprobs"}`` shape,
usage from ``common.usage``. A stream sends one chunk per engine chunk and choice, whose
``text`` is the delta; the last chunk of a choice carries its ``finish_reason`` (and, when asked,
``hidden_states``); ``return_token_ids`` adds each choice's ``token_ids`` (a chunk: its new ones)
and ``prompt_token_ids`` (a stream: in the choice's first chunk).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sglang.srt.entrypoints.http_common import abort_unfinished, merged, wait_all
from sglang.srt.entrypoints.openai.common import (
    OpenAIError,
    check_generation_server,
    finish_reason,
    include_usage,
    lora_adapter,
    metadata,
    now,
    sampling_params,
    serve,
    submit,
    usage,
)
from sglang.srt.entrypoints.openai.response_format import ResponseFormat, response_format_params
from sglang.srt.entrypoints.openapi import body_schema
from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.managers.tokenizer_manager import ReqState, RequestFailed, TokenizerManager

router = APIRouter()

PROMPT_SHAPE = ("prompt must be a string, a list of strings, a list of token ids or a list of "
                "token-id lists")


# ---- request ---------------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class CompletionRequest(BaseModel):
    """The body of ``/v1/completions``. Unknown fields are ignored (contract 5); ``None`` means
    unset (the engine's default applies)."""

    model_config = ConfigDict(extra="ignore")

    model: str = "default"
    # The schema states the shapes that are served; validation (the contract's messages) is below.
    prompt: str | list[Any] = Field(json_schema_extra={"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
        {"type": "array", "minItems": 1,
         "items": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}},
    ]})
    max_tokens: int = Field(16, json_schema_extra={"minimum": 1})
    temperature: float | None = None
    top_p: float | None = None
    n: int = Field(1, json_schema_extra={"minimum": 1})
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = None
    echo: bool = False
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    user: str | None = None
    best_of: int | None = None  # accepted and ignored, as in SGLang
    response_format: ResponseFormat | None = None
    # SGLang extras.
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    no_stop_trim: bool | None = None
    custom_params: dict[str, Any] | None = None
    custom_logit_processor: str | None = None
    return_hidden_states: bool = False
    rid: str | list[str] | None = None
    return_token_ids: bool = False
    # Passed on to the engine path, which refuses them (400) while they are not supported.
    lora_path: Any | None = None
    session_params: Any | None = None
    priority: Any | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, prompt: Any) -> Any:
        """A list prompt holds strings only, token ids only or token-id lists only."""
        if isinstance(prompt, list) and prompt:
            first = prompt[0]
            if isinstance(first, str):
                _check_items(prompt, "prompt", lambda v: isinstance(v, str), "a string")
            elif isinstance(first, list):
                for i, ids in enumerate(prompt):
                    if not isinstance(ids, list):
                        raise ValueError(f"{PROMPT_SHAPE}; prompt[{i}] is not a list")  # noqa: TRY004
                    _check_items(ids, f"prompt[{i}]", _is_token_id, "a token id (integer)")
            else:
                _check_items(prompt, "prompt", _is_token_id, "a token id (integer)")
        return prompt

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("max_tokens must be positive")
        return value

    @field_validator("n")
    @classmethod
    def _n_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("n must be at least 1")
        return value


def _is_token_id(value: Any) -> bool:
    return type(value) is int


def _check_items(items: list[Any], name: str, ok: Any, kind: str) -> None:
    for i, item in enumerate(items):
        if not ok(item):
            raise ValueError(f"{PROMPT_SHAPE}; {name}[{i}] must be {kind}, "
                             f"got {type(item).__name__}")


def _is_empty_prompt(prompt: Any) -> bool:
    """SGLang's rule: no prompt, or a list whose every item is empty."""
    return not prompt or (isinstance(prompt, list) and all(not p for p in prompt))


def check_request(tm: TokenizerManager, req: CompletionRequest) -> None:
    """The OpenAI-only rules the internal request cannot check (OpenAIError, a 400)."""
    check_generation_server(tm)
    if _is_empty_prompt(req.prompt):
        raise OpenAIError("Prompt cannot be empty")
    if req.suffix:
        raise OpenAIError("suffix is not supported by this server: remove the field.")
    if req.stream_options is not None and not req.stream:
        raise OpenAIError("Stream options can only be defined when `stream=True`.")
    limit = tm.args.max_top_logprobs_num
    if req.logprobs is not None and not 0 <= req.logprobs <= limit:
        raise OpenAIError(f"logprobs must be in [0, {limit}] (--max-top-logprobs-num), got "
                          f"{req.logprobs}.")
    if req.echo and tm.tokenizer is None:
        raise OpenAIError("echo needs a tokenizer; the server runs with --skip-tokenizer-init.")


# ---- translation -----------------------------------------------------------------------------------
def _format_params(req: CompletionRequest) -> dict[str, Any]:
    """The grammar sampling params of ``response_format`` (``{}`` for none or ``text``); a
    format that is a grammar cannot come with the json_schema / regex / ebnf fields."""
    try:
        params = response_format_params(req.response_format)
    except ValueError as exc:
        raise OpenAIError(str(exc)) from None
    if params and (req.json_schema or req.regex or req.ebnf):
        raise OpenAIError("response_format cannot be combined with json_schema, regex or ebnf.")
    return params


def to_generate_request(tm: TokenizerManager, req: CompletionRequest) -> GenerateReqInput:
    """The internal request of a checked completion request."""
    params = sampling_params(req, req.max_tokens)
    params.update(_format_params(req))
    prompt = req.prompt
    is_text = isinstance(prompt, str) or isinstance(prompt[0], str)
    with_logprobs = req.logprobs is not None
    return GenerateReqInput(
        text=prompt if is_text else None,
        input_ids=None if is_text else prompt,
        sampling_params=params,
        rid=req.rid,
        stream=req.stream,
        return_logprob=with_logprobs,
        top_logprobs_num=req.logprobs or 0,
        logprob_start_len=0 if (req.echo and with_logprobs) else -1,
        return_text_in_logprobs=True,
        return_hidden_states=req.return_hidden_states,
        custom_logit_processor=req.custom_logit_processor,
        lora_path=lora_adapter(tm, req.model, req.lora_path),
        session_params=req.session_params,
        priority=req.priority,
    )


async def prompt_token_ids(tm: TokenizerManager, req: CompletionRequest) -> list[list[int]]:
    """Each prompt's token ids (``return_token_ids``): text is tokenized as the engine path
    tokenizes it."""
    prompt = req.prompt
    if isinstance(prompt, str) or isinstance(prompt[0], str):
        texts = [prompt] if isinstance(prompt, str) else prompt
        return await tm.run_tokenizer(lambda: [list(tm.tokenizer.encode(t)) for t in texts])
    return [list(prompt)] if isinstance(prompt[0], int) else [list(p) for p in prompt]


def echo_text(tm: TokenizerManager, req: CompletionRequest, prompt_index: int) -> str:
    """The prompt text ``echo`` puts before the completion (token prompts are decoded)."""
    prompt = req.prompt
    if isinstance(prompt, str):
        return prompt
    item = prompt[prompt_index] if isinstance(prompt[0], (str, list)) else prompt
    if isinstance(item, str):
        return item
    return tm.tokenizer.decode(item, skip_special_tokens=True)


# ---- logprobs --------------------------------------------------------------------------------------
def legacy_logprobs(tokens: list[Any], tops: list[Any], offset: int
                    ) -> tuple[dict[str, list[Any]], int]:
    """Legacy logprobs of ``/generate`` entries (``[logprob, token_id, text]``; ``tops`` one
    list of entries or None per token, possibly shorter); ``text_offset`` counts characters from
    ``offset``. Returns the object and the offset after its last token."""
    out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [],
                                 "top_logprobs": []}
    for i, (logprob, _, text) in enumerate(tokens):
        text = text or ""
        top = tops[i] if i < len(tops) else None
        out["text_offset"].append(offset)
        out["token_logprobs"].append(logprob)
        out["tokens"].append(text)
        out["top_logprobs"].append(None if top is None else {t or "": lp for lp, _, t in top})
        offset += len(text)
    return out, offset


def _join(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {key: a[key] + b[key] for key in a}


def choice_logprobs(meta: dict[str, Any], start: int, with_prompt: bool, offset: int
                    ) -> tuple[dict[str, list[Any]], int]:
    """The logprobs of a ``/generate`` object's output tokens from ``start`` (with the prompt's
    first when ``with_prompt``)."""
    out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [],
                                 "top_logprobs": []}
    if with_prompt:
        out, offset = legacy_logprobs(meta.get("input_token_logprobs") or [],
                                      meta.get("input_top_logprobs") or [], offset)
    tail, offset = legacy_logprobs(meta.get("output_token_logprobs", [])[start:],
                                   meta.get("output_top_logprobs", [])[start:], offset)
    return _join(out, tail), offset


# ---- non-streaming ---------------------------------------------------------------------------------
def hidden_states_of(state: ReqState) -> list[Any]:
    """SGLang's choice ``hidden_states``: the last vector (``[]`` when there is one or none)."""
    hidden = state.hidden_states
    return hidden[-1] if len(hidden) > 1 else []


def completion_choice(tm: TokenizerManager, req: CompletionRequest, state: ReqState,
                      prompt_ids: list[list[int]] | None) -> dict[str, Any]:
    """The reply choice of one finished state (``prompt_ids``: with ``return_token_ids``)."""
    result = tm.response(state)
    prefix = echo_text(tm, req, state.single.prompt_index) if req.echo else ""
    logprobs = None
    if req.logprobs is not None:
        logprobs, _ = choice_logprobs(result["meta_info"], 0, req.echo, 0)
    reason, matched = finish_reason(state)
    choice = {"index": state.single.index, "text": prefix + result.get("text", ""),
              "logprobs": logprobs, "finish_reason": reason, "matched_stop": matched}
    if req.return_hidden_states:
        choice["hidden_states"] = hidden_states_of(state)
    if prompt_ids is not None:
        choice["token_ids"] = list(state.output_ids)
        choice["prompt_token_ids"] = prompt_ids[state.single.prompt_index]
    return choice


async def create_completion(tm: TokenizerManager, req: CompletionRequest,
                            raw_request: Request) -> dict[str, Any]:
    """The non-streaming reply."""
    check_request(tm, req)
    states = await submit(tm, to_generate_request(tm, req))
    try:
        prompt_ids = await prompt_token_ids(tm, req) if req.return_token_ids else None
        if not await wait_all(tm, states, raw_request):
            raise OpenAIError("The client disconnected.", 499, "ClientClosedRequest")
    except RequestFailed as exc:
        raise OpenAIError.of(exc) from None
    finally:
        await abort_unfinished(tm, states)
    return {"id": states[0].rid, "object": "text_completion", "created": now(),
            "model": req.model,
            "choices": [completion_choice(tm, req, s, prompt_ids) for s in states],
            "usage": usage(tm, states), "metadata": metadata(tm)}


# ---- streaming -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Sent:
    """What a stream sent of one choice: text characters and logprobs (of the non-incremental
    ``/generate`` chunks), the next ``text_offset`` and the tokens counted."""

    text_chars: int = 0
    logprobs: int = 0
    token_ids: int = 0
    offset: int = 0
    started: bool = False
    completion_tokens: int = 0


@dataclasses.dataclass
class _Stream:
    tm: TokenizerManager
    req: CompletionRequest
    states: list[ReqState]
    rid: str
    created: int
    prompt_ids: list[list[int]] | None = None  # with return_token_ids
    sent: dict[int, _Sent] = dataclasses.field(default_factory=dict)

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": "text_completion", "created": self.created,
                "model": self.req.model, "choices": choices}

    def usage_so_far(self) -> dict[str, Any]:
        """``usage`` with the completion tokens sent so far."""
        out = usage(self.tm, self.states)
        done = sum(s.completion_tokens for s in self.sent.values())
        out["completion_tokens"] = done
        out["total_tokens"] = out["prompt_tokens"] + done
        return out

    def choice_delta(self, state: ReqState, chunk: dict[str, Any]) -> dict[str, Any]:
        """The choice of one ``/generate`` chunk: its new text (and logprobs)."""
        sent = self.sent.setdefault(state.single.index, _Sent())
        incremental = self.tm.args.incremental_streaming_output
        text = chunk.get("text", "")
        delta = text if incremental else text[sent.text_chars:]
        sent.text_chars = len(text)
        meta = chunk["meta_info"]
        first = not sent.started
        if first and self.req.echo:
            delta = echo_text(self.tm, self.req, state.single.prompt_index) + delta
        logprobs = None
        if self.req.logprobs is not None:
            start = 0 if incremental else sent.logprobs
            logprobs, sent.offset = choice_logprobs(meta, start, first and self.req.echo,
                                                    sent.offset)
            sent.logprobs = meta.get("output_token_logprobs_length", 0)
        sent.started = True
        sent.completion_tokens = meta["completion_tokens"]
        reason, matched = (None, None)
        if meta.get("finish_reason") is not None:
            reason, matched = finish_reason(state)
        choice = {"index": state.single.index, "text": delta, "logprobs": logprobs,
                  "finish_reason": reason, "matched_stop": matched}
        if reason is not None and self.req.return_hidden_states:
            choice["hidden_states"] = hidden_states_of(state)
        if self.prompt_ids is not None:
            ids = chunk["output_ids"]
            choice["token_ids"] = list(ids if incremental else ids[sent.token_ids:])
            sent.token_ids = len(ids) if not incremental else sent.token_ids + len(ids)
            if first:
                choice["prompt_token_ids"] = self.prompt_ids[state.single.prompt_index]
        return choice


async def _chunks(stream: _Stream, with_usage: bool, continuous: bool
                  ) -> AsyncIterator[dict[str, Any]]:
    """The chunk objects of a submitted stream; aborts what is unfinished when it ends."""
    try:
        async for state, chunk in merged(stream.tm, stream.states):
            out = stream.chunk([stream.choice_delta(state, chunk)])
            if continuous:
                out["usage"] = stream.usage_so_far()
            yield out
        if with_usage:
            out = stream.chunk([])
            out["usage"] = usage(stream.tm, stream.states)
            yield out
    finally:
        await abort_unfinished(stream.tm, stream.states)


async def start_completion_stream(tm: TokenizerManager, req: CompletionRequest,
                                  raw_request: Request) -> AsyncIterator[dict[str, Any]]:
    """Checks and submits the request, then returns its chunk iterator."""
    check_request(tm, req)
    states = await submit(tm, to_generate_request(tm, req))
    try:
        prompt_ids = await prompt_token_ids(tm, req) if req.return_token_ids else None
    except BaseException:
        await abort_unfinished(tm, states)
        raise
    options = req.stream_options
    continuous = bool(options is not None and options.continuous_usage_stats)
    stream = _Stream(tm, req, states, states[0].rid, now(), prompt_ids)
    return _chunks(stream, include_usage(tm, options), continuous)


@router.post("/v1/completions", openapi_extra={"requestBody": body_schema(CompletionRequest)})
async def completions(raw_request: Request) -> Any:
    return await serve(raw_request, CompletionRequest, create_completion,
                       start_completion_stream)
