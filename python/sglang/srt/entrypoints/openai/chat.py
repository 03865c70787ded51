"""``/v1/chat/completions`` (contract 5.2): the request model, its translation into the one
internal request, and the reply and stream shapes.

A request is validated (messages, tools, response_format, fields), its messages are rendered with
the chat template (``chat_template``) and tokenized here, and the prompt ids are submitted as a
``GenerateReqInput`` (``common.submit``). On a vision-language model, ``image_url`` parts reach
the template as ``{"type": "image"}`` parts (it writes the model's image placeholder) and their
URLs, in message order, become the request's ``image_data``. The states' text is then split
per choice by ``ChoiceOutput``: reasoning (``--reasoning-parser``), tool calls
(``--tool-call-parser``, or the grammar-forced JSON of ``tool_choice`` required / named) and the
content. ``create_chat_completion`` and ``start_chat_stream`` are public: the Anthropic layer
builds on them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sglang.srt.entrypoints.http_common import abort_unfinished, merged, wait_all
from sglang.srt.entrypoints.openai.chat_template import ChatTemplate
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

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
IMAGE_PART = "image_url"  # served when the model takes images
MEDIA_PARTS = ("video_url", "audio_url", "input_audio")  # refused: only images are served
MAX_TOP_LOGPROBS = 20
# Template variables the route sets itself.
RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "documents", "add_generation_prompt",
                                      "continue_final_message", "chat_template"})
IMAGES_NEED_PARTS = ("The chat template prints message content as one string, so it cannot place "
                     "the images: start the server with a --chat-template that renders content "
                     "parts (the model's own multimodal template).")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
# OpenAI fields this server does not implement: a request that sets one gets a 400 naming it.
UNSUPPORTED_FIELDS = {
    "audio": "audio output",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "functions": "the deprecated 'functions' (use 'tools')",
    "function_call": "the deprecated 'function_call' (use 'tool_choice')",
}


# ---- request -----------------------------------------------------------------------------------
class ContentPart(BaseModel):
    """One part of a message's content: ``text``, or ``image_url`` (``{"url": ..., "detail":
    ...}``; the URL is anything ``image_data`` takes) when the model takes images. Other media
    parts are refused; ``check_part`` names what is wrong with a part."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(json_schema_extra={"enum": ["text", IMAGE_PART]})  # others: a 400
    text: str | None = None
    image_url: Any = Field(None, json_schema_extra={"anyOf": [
        {"type": "object", "required": ["url"],
         "properties": {"url": {"type": "string"}, "detail": {"type": "string"}}},
        {"type": "null"}]})


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant message."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message; ``role`` is checked by ``check_messages`` (an unknown one is a 400 naming
    it)."""

    model_config = ConfigDict(extra="ignore")

    role: str = Field(json_schema_extra={"enum": list(ROLES)})  # schema only: 400 names it
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionDef(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class ToolChoiceNamed(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(BaseModel):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatCompletionRequest(BaseModel):
    """The body of ``/v1/chat/completions``: OpenAI's fields and SGLang's extras (contract 5.2).
    Unknown fields are ignored, except those of ``UNSUPPORTED_FIELDS`` (400)."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(json_schema_extra={"minItems": 1})
    model: str = "default"
    max_tokens: int | None = Field(None, json_schema_extra={"minimum": 1})
    max_completion_tokens: int | None = Field(None, json_schema_extra={"minimum": 1})
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    n: int = Field(1, json_schema_extra={"minimum": 1})
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceNamed | None = None
    parallel_tool_calls: bool = True
    user: str | None = None
    # SGLang extras
    regex: str | None = None
    ebnf: str | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    no_stop_trim: bool = False
    ignore_eos: bool = False
    continue_final_message: bool = False
    skip_special_tokens: bool = True
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    custom_logit_processor: str | None = None
    custom_params: dict[str, Any] | None = None
    return_hidden_states: bool = False
    rid: str | None = None
    reasoning_effort: str | None = Field(
        None, json_schema_extra={"anyOf": [{"enum": list(REASONING_EFFORTS)}, {"type": "null"}]})
    lora_path: Any | None = None
    session_params: Any | None = None
    priority: Any | None = None

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _positive(cls, value: int | None, info: Any) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"{info.field_name} must be positive, got {value}")
        return value

    @property
    def max_new_tokens(self) -> int | None:
        """``max_completion_tokens`` (OpenAI's newer name) over ``max_tokens``; None: up to the
        context."""
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return None if self.tools is None else [t.model_dump(exclude_none=True)
                                                for t in self.tools]

    def tool_choice_value(self) -> Any:
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, BaseModel) else choice


# ---- validation --------------------------------------------------------------------------------
def check_request(tm: TokenizerManager, req: ChatCompletionRequest) -> None:
    """The field rules that need no prompt (OpenAIError naming the field)."""
    check_generation_server(tm)
    extra = req.model_extra or {}
    for name, what in UNSUPPORTED_FIELDS.items():
        if extra.get(name) is not None:
            raise OpenAIError(f"{name} is not supported by this server: it needs {what}. "
                              "Remove the field.")
    modalities = extra.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise OpenAIError(f"modalities {modalities!r} is not supported: only ['text'].")
    if req.n < 1:
        raise OpenAIError(f"n must be at least 1, got {req.n}.")
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise OpenAIError("top_logprobs requires logprobs to be true.")
        limit = min(MAX_TOP_LOGPROBS, tm.args.max_top_logprobs_num)
        if not 0 <= req.top_logprobs <= limit:
            raise OpenAIError(f"top_logprobs must be in [0, {limit}], got {req.top_logprobs}.")
    if req.reasoning_effort is not None and req.reasoning_effort not in REASONING_EFFORTS:
        raise OpenAIError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, got "
                          f"{req.reasoning_effort!r}.")
    reserved = RESERVED_TEMPLATE_KWARGS.intersection(req.chat_template_kwargs or {})
    if reserved:
        raise OpenAIError(f"chat_template_kwargs cannot set {min(reserved)!r}: the "
                          "request's own fields set it.")
    if tm.tokenizer is None:
        raise OpenAIError("Chat completions need a tokenizer: the server runs with "
                          "--skip-tokenizer-init.")


def image_refusal(tm: TokenizerManager) -> str | None:
    """Why image parts are refused (the model is text-only); None when the model takes
    images."""
    if tm.image_processor is not None:
        return None
    name = tm.info.architectures[0] if tm.info.architectures else "served"
    return f"the model {name} does not take images (serve a vision-language model)"


def check_messages(messages: list[ChatMessage], image_refused: str | None = None
                   ) -> list[dict[str, Any]]:
    """The messages as template dicts (an image part becomes ``{"type": "image"}``, as HF
    multimodal templates expect); OpenAIError for an empty list, an unknown role or a content
    part that is not supported (``image_refused``: why image parts are, None when the model
    takes images)."""
    if not messages:
        raise OpenAIError("Messages cannot be empty.")
    out = []
    for i, msg in enumerate(messages):
        if msg.role not in ROLES:
            raise OpenAIError(f"messages[{i}].role: unknown role {msg.role!r}; expected one of "
                              f"{', '.join(ROLES)}.")
        if isinstance(msg.content, list):
            for j, part in enumerate(msg.content):
                check_part(part, f"messages[{i}].content[{j}]", image_refused)
        if msg.tool_calls and msg.role != "assistant":
            raise OpenAIError(f"messages[{i}]: only assistant messages have tool_calls.")
        data = msg.model_dump(exclude_none=True)
        data.setdefault("content", "")  # as SGLang: templates print content (null with tool calls)
        if isinstance(data["content"], list):
            data["content"] = [{"type": "image"} if p["type"] == IMAGE_PART else p
                               for p in data["content"]]
        out.append(data)
    return out


def check_part(part: ContentPart, where: str, image_refused: str | None = None) -> None:
    """OpenAIError naming ``where`` for a part that is refused or malformed."""
    if part.type == IMAGE_PART:
        if image_refused is not None:
            raise OpenAIError(f"{where}: image_url parts are not supported: {image_refused}.")
        check_image_url(part.image_url, f"{where}.image_url")
        return
    if part.type in MEDIA_PARTS:
        raise OpenAIError(f"{where}: content parts of type '{part.type}' are not supported "
                          f"(this server takes text and {IMAGE_PART} parts).")
    if part.type != "text":
        raise OpenAIError(f"{where}: unknown content part type {part.type!r}; expected 'text' "
                          f"or '{IMAGE_PART}'.")
    if part.text is None:
        raise OpenAIError(f"{where}: a text part needs a 'text' string.")


def check_image_url(value: Any, where: str) -> None:
    """``image_url`` must be ``{"url": "<non-empty string>", "detail": ...}`` (``detail`` is
    accepted and has no effect: the model's image processor sizes the image)."""
    if not isinstance(value, dict):
        raise OpenAIError(f"{where}: must be an object with a 'url' string, got "
                          f"{type(value).__name__}.")
    url = value.get("url")
    if not isinstance(url, str) or not url:
        raise OpenAIError(f"{where}.url: must be a non-empty string (an http(s) URL or a "
                          "data:image/...;base64 URL).")


def image_urls(messages: list[ChatMessage]) -> list[str]:
    """The URLs of the image parts, in message order (the prompt's ``image_data``)."""
    return [part.image_url["url"] for msg in messages if isinstance(msg.content, list)
            for part in msg.content if part.type == IMAGE_PART]


def template_kwargs(req: ChatCompletionRequest) -> dict[str, Any]:
    """``chat_template_kwargs`` plus what ``reasoning_effort`` implies (``enable_thinking`` and
    ``thinking``, unless the kwargs set them)."""
    kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort is not None:
        thinking = req.reasoning_effort != "none"
        kwargs.setdefault("reasoning_effort", req.reasoning_effort)
        kwargs.setdefault("enable_thinking", thinking)
        kwargs.setdefault("thinking", thinking)
    return kwargs


# ---- chat template ------------------------------------------------------------------------------
_TEMPLATES: dict[tuple[int, str | None], ChatTemplate | None] = {}


def chat_template_of(tm: TokenizerManager) -> ChatTemplate:
    """The server's chat template (resolved once); OpenAIError when the model has none."""
    key = (id(tm.tokenizer), tm.args.chat_template)
    if key not in _TEMPLATES:
        try:
            _TEMPLATES[key] = ChatTemplate.resolve(tm.args.chat_template, tm.tokenizer)
        except ValueError as exc:
            raise OpenAIError(str(exc)) from None
    template = _TEMPLATES[key]
    if template is None:
        raise OpenAIError("The model's tokenizer has no chat template; start the server with "
                          "--chat-template (a .jinja file or a builtin name such as chatml).")
    return template


def render_prompt(tm: TokenizerManager, template: ChatTemplate, messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None, req: ChatCompletionRequest) -> list[int]:
    """The prompt ids: the rendered template tokenized without adding special tokens (the
    template writes BOS itself where the model needs it). Runs on the tokenize thread."""
    continue_final = req.continue_final_message and messages[-1]["role"] == "assistant"
    text = template.render(messages, tools=tools, add_generation_prompt=not continue_final,
                           continue_final_message=continue_final, **template_kwargs(req))
    tm.validator.check_text(text)
    return tm.tokenizer.encode(text, add_special_tokens=False)


# ---- tools and output parsing ------------------------------------------------------------------
@dataclass
class OutputPlan:
    """How each choice's text is read: which parsers run."""

    reasoning_parser: str | None = None
    stream_reasoning: bool = True
    force_reasoning: bool | None = None
    tool_parser: str | None = None
    tools: list[dict[str, Any]] | None = None
    forced_plan: Any = None  # a ToolPlan whose output is grammar-forced tool-call JSON


def plan_output(tm: TokenizerManager, req: ChatCompletionRequest) -> tuple[OutputPlan, Any]:
    """The output plan and the ToolPlan (None without tools / tool_choice)."""
    out = OutputPlan()
    parser = tm.args.reasoning_parser
    if parser and req.separate_reasoning:
        out.reasoning_parser = parser
        out.stream_reasoning = req.stream_reasoning
        thinking = template_kwargs(req).get("enable_thinking")
        out.force_reasoning = thinking if isinstance(thinking, bool) else None
    if req.tools is None and req.tool_choice is None:
        return out, None
    from sglang.srt.entrypoints.openai.tools import plan_tools

    tools = req.tool_dicts()
    try:
        plan = plan_tools(tools, req.tool_choice_value(), req.parallel_tool_calls,
                          tm.args.tool_call_parser)
    except ValueError as exc:
        raise OpenAIError(str(exc)) from None
    out.tools = tools
    if plan.forced:
        out.forced_plan = plan
    elif tools and req.tool_choice != "none" and tm.args.tool_call_parser:
        out.tool_parser = tm.args.tool_call_parser
    return out, plan


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ChoiceOutput:
    """Splits one choice's generated text into reasoning, content and tool calls, whole or as a
    stream of deltas."""

    def __init__(self, plan: OutputPlan) -> None:
        self.reasoning = None
        self.tool_parser = None
        self.forced = None
        try:
            self._make_parsers(plan)
        except ValueError as exc:  # an unknown parser kind
            raise OpenAIError(str(exc)) from None
        self.call_ids: dict[int, str] = {}
        self.made_calls = False

    def _make_parsers(self, plan: OutputPlan) -> None:
        if plan.reasoning_parser:
            from sglang.srt.parser.reasoning_parser import ReasoningParser

            self.reasoning = ReasoningParser(plan.reasoning_parser, plan.stream_reasoning,
                                             plan.force_reasoning)
        if plan.forced_plan is not None:
            from sglang.srt.entrypoints.openai.tools import ForcedToolOutput

            self.forced = ForcedToolOutput(plan.forced_plan)
        elif plan.tool_parser:
            from sglang.srt.parser.tool_call_parser import ToolCallParser

            self.tool_parser = ToolCallParser(plan.tool_parser, plan.tools or [])

    def parse(self, text: str) -> tuple[str | None, str, list[dict[str, Any]]]:
        """(reasoning or None, content, OpenAI tool_calls) of a whole output."""
        reasoning = None
        if self.reasoning is not None:
            reasoning, text = self.reasoning.parse_non_stream(text)
        calls: list[Any] = []
        if self.forced is not None:
            calls, text = self.forced.parse_non_stream(text), ""
        elif self.tool_parser is not None:
            text, calls = self.tool_parser.parse_non_stream(text)
        self.made_calls = bool(calls)
        return reasoning, text, [
            {"id": new_call_id(), "index": i, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in enumerate(calls)]

    def feed(self, delta: str, last: bool) -> dict[str, Any]:
        """The chunk delta of the next piece of text (``last``: the output ended, flush what the
        parsers held back); ``{}`` when there is nothing to send yet."""
        reasoning, content = "", delta
        if self.reasoning is not None:
            reasoning, content = self.reasoning.parse_stream_chunk(delta)
            if last:
                r, c = self.reasoning.flush()
                reasoning, content = reasoning + r, content + c
        deltas: list[Any] = []
        if self.forced is not None:
            deltas, content = self.forced.parse_stream_chunk(content), ""
        elif self.tool_parser is not None:
            content, deltas = self.tool_parser.parse_stream_chunk(content)
            if last:
                c, more = self.tool_parser.flush()
                content, deltas = content + c, deltas + more
        out: dict[str, Any] = {}
        if reasoning:
            out["reasoning_content"] = reasoning
        if content:
            out["content"] = content
        if deltas:
            out["tool_calls"] = [self.call_delta(d) for d in deltas]
        return out

    def call_delta(self, d: Any) -> dict[str, Any]:
        """One streamed tool-call delta: id, type and name on a call's first delta."""
        self.made_calls = True
        function: dict[str, Any] = {"arguments": d.arguments}
        item: dict[str, Any] = {"index": d.index}
        if d.name is not None:
            item["id"] = self.call_ids.setdefault(d.index, new_call_id())
            item["type"] = "function"
            function = {"name": d.name, **function}
        item["function"] = function
        return item


# ---- the internal request ----------------------------------------------------------------------
@dataclass
class Prepared:
    """A validated chat request: the internal request and how to read its output."""

    obj: GenerateReqInput
    output: OutputPlan = field(default_factory=OutputPlan)


async def prepare(tm: TokenizerManager, req: ChatCompletionRequest) -> Prepared:
    """Validates ``req``, renders and tokenizes its prompt and builds the internal request.
    OpenAIError for whatever is refused."""
    check_request(tm, req)
    messages = check_messages(req.messages, image_refusal(tm))
    images = image_urls(req.messages)
    template = chat_template_of(tm)
    if images and not template.content_as_parts:
        raise OpenAIError(IMAGES_NEED_PARTS)
    output, tool_plan = plan_output(tm, req)
    template_tools = tool_plan.template_tools if tool_plan is not None else None
    try:
        ids = await tm.run_tokenizer(render_prompt, tm, template, messages, template_tools, req)
    except ValueError as exc:  # ChatTemplateError, a prompt too long to tokenize
        raise OpenAIError(str(exc)) from None
    params = chat_sampling_params(tm, req, len(ids))
    if tool_plan is not None and tool_plan.constraint:
        params.update(tool_plan.constraint)
    obj = GenerateReqInput(
        input_ids=ids, sampling_params=params, rid=req.rid, stream=req.stream,
        return_logprob=req.logprobs, logprob_start_len=-1,
        top_logprobs_num=(req.top_logprobs or 0) if req.logprobs else 0,
        return_hidden_states=req.return_hidden_states,
        custom_logit_processor=req.custom_logit_processor,
        lora_path=lora_adapter(tm, req.model, req.lora_path),
        session_params=req.session_params, priority=req.priority, image_data=images or None)
    return Prepared(obj, output)


def chat_sampling_params(tm: TokenizerManager, req: ChatCompletionRequest,
                         prompt_len: int) -> dict[str, Any]:
    """The internal sampling params: the request's fields over ``--sampling-defaults``, the
    response_format grammar, ``spaces_between_special_tokens`` from chat_template_kwargs, and
    special tokens kept in the text when tools may be called."""
    max_new = req.max_new_tokens
    available = tm.info.context_length - prompt_len
    # (A prompt that fills the context is refused by the engine's prompt check instead.)
    if max_new is not None and 0 < available < max_new and not tm.args.allow_auto_truncate:
        raise OpenAIError(f"max_completion_tokens is too large: {max_new}.This model supports at "
                          f"most {available} completion tokens.")
    params = sampling_params(req, max_new, tm.chat_sampling_defaults)
    try:
        params.update(response_format_params(req.response_format))
    except ValueError as exc:
        raise OpenAIError(str(exc)) from None
    spaces = (req.chat_template_kwargs or {}).get("spaces_between_special_tokens")
    if isinstance(spaces, bool):
        params["spaces_between_special_tokens"] = spaces
    if req.tools and req.tool_choice != "none":
        # As SGLang: tool-call markers are special tokens in some vocabularies (the parsers need
        # them in the text).
        params["skip_special_tokens"] = False
    return params


# ---- replies -----------------------------------------------------------------------------------
def token_logprob(tm: TokenizerManager, logprob: float, token_id: int) -> dict[str, Any]:
    text = tm.builder.token_text(token_id)
    return {"token": text, "bytes": list(text.encode("utf-8")), "logprob": logprob}


def logprobs_of(tm: TokenizerManager, state: ReqState, start: int, end: int
                ) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` of output tokens [start, end) of a state (None unless asked)."""
    if not state.single.return_logprob:
        return None
    content = []
    tops = state.output_top_logprobs
    for i in range(start, min(end, len(state.output_token_logprobs))):
        lp, tok = state.output_token_logprobs[i]
        entry = token_logprob(tm, lp, tok)
        top = tops[i] if i < len(tops) and tops[i] is not None else []
        entry["top_logprobs"] = [token_logprob(tm, t_lp, t_tok) for t_lp, t_tok in top]
        content.append(entry)
    return {"content": content}


def choice_finish(state: ReqState, made_calls: bool) -> tuple[str | None, Any]:
    """(finish_reason, matched_stop); ``tool_calls`` when calls were made and the model
    stopped."""
    reason, matched = finish_reason(state)
    if made_calls and reason == "stop":
        reason = "tool_calls"
    return reason, matched


def choice_of(tm: TokenizerManager, state: ReqState, plan: OutputPlan) -> dict[str, Any]:
    output = ChoiceOutput(plan)
    reasoning, content, calls = output.parse(state.text)
    reason, matched = choice_finish(state, output.made_calls)
    choice = {
        "index": state.single.index,
        "message": {"role": "assistant", "content": content, "reasoning_content": reasoning,
                    "tool_calls": calls or None},
        "logprobs": logprobs_of(tm, state, 0, len(state.output_ids)),
        "finish_reason": reason,
        "matched_stop": matched,
    }
    if state.single.return_hidden_states:
        choice["hidden_states"] = state.hidden_states
    return choice


async def create_chat_completion(tm: TokenizerManager, req: ChatCompletionRequest,
                                 raw_request: Request) -> dict[str, Any]:
    """The non-streaming reply (``chat.completion``); OpenAIError for a refused or failed
    request."""
    prepared = await prepare(tm, req)
    states = await submit(tm, prepared.obj)
    try:
        if not await wait_all(tm, states, raw_request):
            raise OpenAIError("The client disconnected; the request was aborted.")
    except RequestFailed as exc:
        raise OpenAIError.of(exc) from None
    finally:
        await abort_unfinished(tm, states)
    choices = [choice_of(tm, s, prepared.output) for s in states]
    choices.sort(key=lambda c: c["index"])
    return {"id": states[0].rid, "object": "chat.completion", "created": now(),
            "model": req.model, "choices": choices, "usage": usage(tm, states),
            "metadata": metadata(tm)}


# ---- streaming ---------------------------------------------------------------------------------
@dataclass
class ChoiceStream:
    """What a stream has sent of one choice."""

    output: ChoiceOutput
    text_len: int = 0
    num_tokens: int = 0
    done: bool = False


async def start_chat_stream(tm: TokenizerManager, req: ChatCompletionRequest,
                            raw_request: Request) -> AsyncIterator[dict[str, Any]]:
    """Validates and submits the request (OpenAIError before anything is sent), then returns the
    iterator of ``chat.completion.chunk`` objects: a role chunk per choice, content / reasoning /
    tool-call deltas, a final chunk per choice with its finish_reason, the optional usage
    chunk."""
    prepared = await prepare(tm, req)
    streams = {i: ChoiceStream(ChoiceOutput(prepared.output)) for i in range(req.n)}
    states = await submit(tm, prepared.obj)
    return _chunks(tm, req, states, streams)


async def _chunks(tm: TokenizerManager, req: ChatCompletionRequest, states: list[ReqState],
                  streams: dict[int, ChoiceStream]) -> AsyncIterator[dict[str, Any]]:
    rid, created = states[0].rid, now()
    options = req.stream_options
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    continuous_usage = bool(options is not None and options.continuous_usage_stats)

    def chunk(index: int, delta: dict[str, Any], logprobs: Any = None,
              finish: tuple[Any, Any] = (None, None)) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion.chunk", "created": created,
                "model": req.model,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                             "finish_reason": finish[0], "matched_stop": finish[1]}]}

    try:
        for s in sorted(states, key=lambda s: s.single.index):
            yield chunk(s.single.index, {"role": "assistant", "content": "",
                                         "reasoning_content": None})
        async for state, _ in merged(tm, states):
            sent = streams[state.single.index]
            if sent.done:
                continue
            last = state.finished
            text, n = state.text, len(state.output_ids)
            if not last:  # a stop string may be completing: its start is trimmed at the end
                text = text[:len(text) - stop_prefix_len(text, stops)]
            delta = sent.output.feed(text[sent.text_len:], last)
            logprobs = logprobs_of(tm, state, sent.num_tokens, n)
            sent.text_len, sent.num_tokens = len(text), n
            if delta or (logprobs and logprobs["content"]):
                piece = chunk(state.single.index, delta, logprobs)
                if continuous_usage:
                    piece["usage"] = usage(tm, states)
                yield piece
            if last:
                sent.done = True
                yield chunk(state.single.index, {},
                            finish=choice_finish(state, sent.output.made_calls))
        if include_usage(tm, req.stream_options):
            yield {"id": rid, "object": "chat.completion.chunk", "created": created,
                   "model": req.model, "choices": [], "usage": usage(tm, states)}
    finally:
        await abort_unfinished(tm, states)


def stop_prefix_len(text: str, stops: list[str]) -> int:
    """The length of the longest end of ``text`` that begins one of the stop strings (held back
    while streaming, so that text cut at a stop string is never sent)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


@router.post("/v1/chat/completions",
             openapi_extra={"requestBody": body_schema(ChatCompletionRequest)})
async def chat_completions(raw_request: Request) -> Any:
    return await serve(raw_request, ChatCompletionRequest, create_chat_completion,
                       start_chat_stream)


__all__ = ["ChatCompletionRequest", "create_chat_completion", "start_chat_stream"]
