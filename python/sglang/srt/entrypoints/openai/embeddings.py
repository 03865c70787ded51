"""``/v1/embeddings`` (contract 5.3).

The body (``EmbeddingRequest``) is checked with SGLang's messages (empty input, whitespace-only
text, list item types), then turned into ``EmbeddingInput``: the texts or token-id lists to encode,
which becomes the native ``EmbeddingReqInput`` (one engine path with ``/encode``). A generation
model (no ``--is-embedding``) answers SGLang's is-embedding 400. ``embedding_reply`` shapes the
contract's reply (floats or base64 of little-endian float32).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, field_validator

from sglang.srt.entrypoints.openai.common import OpenAIError, engine_errors, serve
from sglang.srt.entrypoints.openapi import body_schema
from sglang.srt.managers.io_struct import IS_EMBEDDING_NEEDED, EmbeddingReqInput
from sglang.srt.managers.tokenizer_manager import TokenizerManager

router = APIRouter()

NOT_EMBEDDING_MODEL = IS_EMBEDDING_NEEDED
# Fields the engine path does not support yet: a request that sets one is refused.
UNSUPPORTED = {"lora_path": "LoRA adapters", "priority": "priority scheduling"}


class EmbeddingRequest(BaseModel):
    """The body of ``/v1/embeddings``; unknown fields are ignored (contract 5)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[Any]
    model: str = "default"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    rid: str | list[str] | None = None
    priority: Any | None = None
    lora_path: Any | None = None

    @field_validator("dimensions")
    @classmethod
    def _dimensions_positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("dimensions must be at least 1")
        return value


@dataclasses.dataclass(frozen=True)
class EmbeddingInput:
    """What to encode: one text or one token-id list per output vector."""

    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None
    dimensions: int | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


# ---- checks ----------------------------------------------------------------------------------------
def _check_texts(items: list[Any]) -> list[str]:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise OpenAIError("All items in input list must be strings")
        if not item.strip():
            raise OpenAIError(f"Input at index {i} cannot be empty or whitespace only")
    return items


def _check_ids(items: list[Any], name: str) -> list[int]:
    for i, item in enumerate(items):
        if type(item) is not int:
            raise OpenAIError(f"All items in {name} must be integers (token ids)")
        if item < 0:
            raise OpenAIError(f"Token ID at index {i} of {name} must be non-negative")
    return items


def to_embedding_input(req: EmbeddingRequest) -> EmbeddingInput:
    """The checked input (OpenAIError with SGLang's messages otherwise)."""
    value = req.input
    if not value:
        raise OpenAIError("Input cannot be empty")
    if isinstance(value, str):
        if not value.strip():
            raise OpenAIError("Input cannot be empty or whitespace only")
        return EmbeddingInput(texts=[value], dimensions=req.dimensions)
    first = value[0]
    if isinstance(first, str):
        return EmbeddingInput(texts=_check_texts(value), dimensions=req.dimensions)
    if isinstance(first, list):
        lists = []
        for i, ids in enumerate(value):
            if not isinstance(ids, list) or not ids:
                raise OpenAIError(f"Input at index {i} must be a non-empty list of token ids")
            lists.append(_check_ids(ids, f"input[{i}]"))
        return EmbeddingInput(token_ids=lists, dimensions=req.dimensions)
    if isinstance(first, dict):
        raise OpenAIError("Multimodal embedding inputs ({text, image, video}) are not supported "
                          "by this server yet.")
    return EmbeddingInput(token_ids=[_check_ids(value, "input")], dimensions=req.dimensions)


def check_request(tm: TokenizerManager, req: EmbeddingRequest) -> EmbeddingInput:
    """Fields not supported, the input, then whether this server computes embeddings."""
    for name, needs in UNSUPPORTED.items():
        if getattr(req, name) is not None:
            raise OpenAIError(f"{name} is not supported by this server yet: it needs {needs}. "
                              "Remove the field.")
    inputs = to_embedding_input(req)
    if not tm.args.is_embedding:
        raise OpenAIError(NOT_EMBEDDING_MODEL)
    return inputs


# ---- reply -----------------------------------------------------------------------------------------
def encode_vector(vector: Any, encoding_format: str) -> list[float] | str:
    """A vector as floats, or as base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    if isinstance(vector, np.ndarray):
        return vector  # serialised by orjson (OPT_SERIALIZE_NUMPY)
    return [float(x) for x in vector]


def embedding_reply(model_path: str, vectors: list[Any], prompt_tokens: int,
                    encoding_format: str) -> dict[str, Any]:
    """The contract's reply for the encoded vectors (``model`` is the server's model path)."""
    data = [{"embedding": encode_vector(v, encoding_format), "index": i, "object": "embedding"}
            for i, v in enumerate(vectors)]
    return {"data": data, "model": model_path, "object": "list",
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
                      "completion_tokens": 0, "prompt_tokens_details": None}}


def to_native(inputs: EmbeddingInput, rid: str | list[str] | None) -> EmbeddingReqInput:
    """The /encode request of the checked input (always a batch: one vector per item)."""
    if inputs.texts is not None:
        return EmbeddingReqInput(text=list(inputs.texts), dimensions=inputs.dimensions,
                                 rid=[rid] if isinstance(rid, str) else rid)
    return EmbeddingReqInput(input_ids=[list(i) for i in inputs.token_ids or []],
                             dimensions=inputs.dimensions,
                             rid=[rid] if isinstance(rid, str) else rid)


async def run_encode(tm: TokenizerManager, inputs: EmbeddingInput, rid: str | list[str] | None,
                     raw_request: Request) -> list[Any]:
    """The native encode of checked inputs; the finished states (OpenAIError otherwise)."""
    from sglang.srt.entrypoints.http_common import encode_states

    with engine_errors():
        states, _ = await encode_states(tm, to_native(inputs, rid), raw_request)
    if not all(s.finished and s.embedding is not None for s in states):
        raise OpenAIError("The client disconnected.", 499, "ClientClosedRequest")
    return states


async def create_embedding(tm: TokenizerManager, req: EmbeddingRequest,
                           raw_request: Request) -> dict[str, Any]:
    inputs = check_request(tm, req)
    states = await run_encode(tm, inputs, req.rid, raw_request)
    return embedding_reply(tm.args.model_path, [s.embedding for s in states],
                           sum(s.prompt_tokens for s in states), req.encoding_format)


async def start_embedding_stream(tm: TokenizerManager, req: EmbeddingRequest,
                                 raw_request: Request) -> AsyncIterator[dict[str, Any]]:
    raise OpenAIError("/v1/embeddings does not stream.")  # EmbeddingRequest has no stream


@router.post("/v1/embeddings", openapi_extra={"requestBody": body_schema(EmbeddingRequest)})
async def embeddings(raw_request: Request) -> Any:
    return await serve(raw_request, EmbeddingRequest, create_embedding, start_embedding_stream)
