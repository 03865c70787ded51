"""``/v1/classify`` (contract 5.4): a reward or classification model served with
``--is-embedding``. ``{"model", "input": str | [str] | [int]}`` becomes one native
``EmbeddingReqInput`` (the ``/classify`` path); each input's logits give ``probs`` (softmax),
``label`` (the config's name of the most probable class) and ``num_classes``."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from sglang.srt.entrypoints.openai.common import OpenAIError, new_id, now, serve
from sglang.srt.entrypoints.openai.embeddings import (
    EmbeddingInput,
    EmbeddingRequest,
    run_encode,
    to_embedding_input,
)
from sglang.srt.entrypoints.openapi import body_schema
from sglang.srt.managers.tokenizer_manager import TokenizerManager

router = APIRouter()
NOT_CLASSIFIER = "This model is not a classification or reward model: /v1/classify needs one."


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[Any]
    model: str = "default"
    user: str | None = None
    rid: str | list[str] | None = None


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


async def create_classification(
    tm: TokenizerManager, req: ClassifyRequest, raw_request: Request
) -> dict[str, Any]:
    inputs: EmbeddingInput = to_embedding_input(EmbeddingRequest(input=req.input))
    if tm.info.is_embedding and not tm.info.id2label:
        raise OpenAIError(NOT_CLASSIFIER)
    states = await run_encode(tm, inputs, req.rid, raw_request)
    data = []
    for i, s in enumerate(states):
        probs = _softmax(np.asarray(s.embedding, dtype=np.float64))
        data.append({"index": i, "label": tm.info.id2label.get(int(probs.argmax()), ""),
                     "probs": probs.tolist(), "num_classes": len(probs)})  # fmt: skip
    tokens = sum(s.prompt_tokens for s in states)
    return {"id": new_id(), "object": "list", "created": now(), "model": req.model, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}  # fmt: skip


async def no_stream(tm: TokenizerManager, req: ClassifyRequest, raw_request: Request) -> Any:
    raise OpenAIError("/v1/classify does not stream.")


@router.post("/v1/classify", openapi_extra={"requestBody": body_schema(ClassifyRequest)})
async def classify(raw_request: Request) -> Any:
    return await serve(raw_request, ClassifyRequest, create_classification, no_stream)
