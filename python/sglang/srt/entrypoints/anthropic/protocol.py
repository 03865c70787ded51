"""The Anthropic Messages API's request bodies and error object.

The routes (``messages``) validate a body into ``MessagesRequest`` or ``CountTokensRequest``;
``translate`` turns those into an OpenAI chat request. The models are strict: a field the API
does not know, a value of the wrong type or out of range, a content block of the wrong kind is a
400 naming it, never ignored. What is accepted and not acted on is named here: ``metadata`` (as
OpenAI's ``user``), ``cache_control`` (the radix cache reuses every prefix anyway), ``thinking``
``{"type": "disabled"}`` and ``thinking`` blocks of earlier assistant turns (Anthropic drops those
from the context too). Image blocks of user turns (a ``base64`` or ``url`` source) are served on a
vision-language model (``messages`` refuses them on a text-only one); images inside a
``tool_result``, document blocks and extended thinking are refused: not supported yet.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STRICT = ConfigDict(extra="forbid", strict=True)
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,128}$"

# Content block kinds of the Anthropic API this server does not take (yet).
UNSUPPORTED_BLOCKS = {
    "document": "document content blocks are not supported yet",
    "search_result": "search_result content blocks are not supported yet",
    "container_upload": "container_upload content blocks are not supported yet",
    "server_tool_use": "server tools are not supported",
    "web_search_tool_result": "server tools are not supported",
}


# ---- content blocks ------------------------------------------------------------------------------
class CacheControl(BaseModel):
    """A prompt-caching hint: accepted; every prefix is cached anyway."""

    model_config = STRICT
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: None = None  # a reply's ``"citations": null`` sent back as is


class Base64ImageSource(BaseModel):
    """Image bytes in the body (the media types Anthropic takes)."""

    model_config = STRICT
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class URLImageSource(BaseModel):
    """An image the server fetches (anything ``image_data`` takes)."""

    model_config = STRICT
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(BaseModel):
    """An image of a user turn: served on a vision-language model, as an OpenAI ``image_url``
    part (a base64 source as a ``data:`` URL)."""

    model_config = STRICT
    type: Literal["image"]
    source: Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None

    def url(self) -> str:
        """The image as a URL that ``image_data`` takes."""
        source = self.source
        if isinstance(source, Base64ImageSource):
            return f"data:{source.media_type};base64,{source.data}"
        return source.url


class ToolUseBlock(BaseModel):
    """A tool call of an earlier assistant turn."""

    model_config = STRICT
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: None = None  # a reply's ``"caller": null`` / ``"toolset_name": null`` sent back as is
    toolset_name: None = None


class ToolResultBlock(BaseModel):
    """The result of a tool call, in the user turn after it."""

    model_config = STRICT
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        return refuse_unsupported_blocks(content, TOOL_RESULT_UNSUPPORTED)

    def text(self) -> str:
        """The result as one text (text blocks joined by newlines)."""
        if isinstance(self.content, list):
            return "\n".join(block.text for block in self.content)
        return self.content or ""


class ThinkingBlock(BaseModel):
    """The reasoning of an earlier assistant turn: accepted and left out of the prompt."""

    model_config = STRICT
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(BaseModel):
    model_config = STRICT
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type"),
]
# The blocks each role may send.
ROLE_BLOCKS = {"user": ("text", "image", "tool_result"),
               "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}
# What a tool_result's content may not hold (its content is text only).
TOOL_RESULT_UNSUPPORTED = {
    **UNSUPPORTED_BLOCKS, "image": "image blocks in tool_result content are not supported yet"}


def refuse_unsupported_blocks(content: Any, unsupported: dict[str, str] | None = None) -> Any:
    """ValueError naming the first block of a kind this server does not take (yet)."""
    unsupported = UNSUPPORTED_BLOCKS if unsupported is None else unsupported
    if isinstance(content, list):
        for i, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and kind in unsupported:
                raise ValueError(f"content block {i}: {unsupported[kind]}")
    return content


class Message(BaseModel):
    model_config = STRICT
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _supported(cls, content: Any) -> Any:
        return refuse_unsupported_blocks(content)

    @model_validator(mode="after")
    def _blocks_fit_role(self) -> Message:
        allowed = ROLE_BLOCKS[self.role]
        for i, block in enumerate(self.blocks()):
            if block.type not in allowed:
                raise ValueError(f"content block {i}: a {self.role} message cannot contain "
                                 f"{block.type} blocks")
        return self

    def blocks(self) -> list[Any]:
        """The content as blocks (a string is one text block)."""
        if isinstance(self.content, str):
            return [TextBlock(type="text", text=self.content)]
        return list(self.content)


# ---- tools ---------------------------------------------------------------------------------------
class Tool(BaseModel):
    """A client tool: its input is JSON validating against ``input_schema``."""

    model_config = STRICT
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError('input_schema must be a JSON schema of "type": "object"')
        return schema


class ToolChoiceAuto(BaseModel):
    model_config = STRICT
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(BaseModel):
    model_config = STRICT
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(BaseModel):
    model_config = STRICT
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(BaseModel):
    model_config = STRICT
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
                       Field(discriminator="type")]


class Metadata(BaseModel):
    """Accepted, like OpenAI's ``user``: nothing is done with it."""

    model_config = STRICT
    user_id: str | None = None


# ---- requests ------------------------------------------------------------------------------------
class PromptRequest(BaseModel):
    """What makes the prompt: the part ``/v1/messages`` and ``/v1/messages/count_tokens`` share."""

    model_config = STRICT
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None

    @field_validator("thinking")
    @classmethod
    def _no_thinking(cls, thinking: dict[str, Any] | None) -> dict[str, Any] | None:
        if thinking is not None and thinking != {"type": "disabled"}:
            raise ValueError("extended thinking is not supported yet "
                             '(only {"type": "disabled"} is accepted)')
        return thinking

    @model_validator(mode="after")
    def _tools_consistent(self) -> PromptRequest:
        check_tools(self)
        return self

    def image_blocks(self) -> list[tuple[int, int]]:
        """(message index, block index) of each image block, in order."""
        return [(i, j) for i, message in enumerate(self.messages)
                for j, block in enumerate(message.blocks()) if block.type == "image"]

    def system_text(self) -> str | None:
        """The system prompt as one text (blocks joined by newlines), None when absent."""
        if isinstance(self.system, list):
            return "\n".join(block.text for block in self.system)
        return self.system


class MessagesRequest(PromptRequest):
    """The body of ``POST /v1/messages``."""

    max_tokens: int = Field(ge=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = None
    stream: bool = False
    metadata: Metadata | None = None


class CountTokensRequest(PromptRequest):
    """The body of ``POST /v1/messages/count_tokens``."""


def check_tools(req: PromptRequest) -> None:
    """ValueError for tools that contradict each other or the conversation: duplicate names,
    a tool_choice without tools or naming an unknown tool, tool blocks without tools, a
    tool_result answering no tool_use of the assistant turn before it."""
    names = [tool.name for tool in req.tools or []]
    if len(set(names)) != len(names):
        raise ValueError("tools: tool names must be unique")
    choice = req.tool_choice
    if choice is not None and choice.type != "none" and not names:
        raise ValueError(f"tool_choice: type {choice.type!r} needs tools")
    if isinstance(choice, ToolChoiceTool) and choice.name not in names:
        raise ValueError(f"tool_choice: tool {choice.name!r} is not in tools")
    previous_calls: set[str] = set()
    for i, message in enumerate(req.messages):
        kinds = {block.type for block in message.blocks()}
        if kinds & {"tool_use", "tool_result"} and not names:
            raise ValueError(f"messages.{i}: tool_use and tool_result blocks need tools")
        for block in message.blocks():
            if block.type == "tool_result" and block.tool_use_id not in previous_calls:
                raise ValueError(f"messages.{i}: tool_result for {block.tool_use_id!r} answers "
                                 "no tool_use block of the previous assistant message")
        previous_calls = {b.id for b in message.blocks() if b.type == "tool_use"}


# ---- errors --------------------------------------------------------------------------------------
# HTTP status -> the Anthropic error type.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def error_type(status_code: int) -> str:
    if status_code in ERROR_TYPES:
        return ERROR_TYPES[status_code]
    return "api_error" if status_code >= 500 else "invalid_request_error"


class AnthropicError(Exception):
    """A request the Anthropic layer refuses or could not serve: ``{"type": "error", ...}``."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def body(self) -> dict[str, Any]:
        return {"type": "error",
                "error": {"type": error_type(self.status_code), "message": self.message}}
