"""``/v1/rerank`` (contract 2.7): a query against documents, answered sorted by relevance.

Two kinds of model score the pairs, each through an existing engine path:

* a cross-encoder on an ``--is-embedding`` server (``BertForSequenceClassification``,
  ``XLMRobertaForSequenceClassification`` as in bge-reranker-v2-m3, or a decoder
  ``*ForSequenceClassification``): the pairs become one native cross-encoder ``/encode`` request
  and a document's score is its head's logit (raw, as SGLang reports it);
* a decoder reranker with a yes/no answer (Qwen3-Reranker style) on a generation server: each
  document becomes the reranker prompt (``yes_no_parts``), one greedy step is generated with
  the log-probabilities of the ``yes`` and ``no`` tokens, and the score is
  P(yes) / (P(yes) + P(no)). The prompts share the instruction and query: that prefix is
  prefilled once on its own, and every document's prompt finds it in the radix cache.

The reply is a bare JSON array sorted by score (highest first), cut to ``top_n``; each item has
``score``, ``document`` (unless ``return_documents`` is false), ``index`` (position in
``documents``) and ``meta_info``.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, field_validator

from sglang.srt.entrypoints.openai.common import OpenAIError, engine_errors, serve
from sglang.srt.entrypoints.openapi import body_schema
from sglang.srt.managers.io_struct import EmbeddingReqInput, GenerateReqInput
from sglang.srt.managers.req_state import ReqState
from sglang.srt.managers.tokenizer_manager import TokenizerManager

router = APIRouter()

DEFAULT_INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query"
_SYSTEM = ("Judge whether the Document meets the requirements based on the Query and the Instruct "
           'provided. Note that the answer can only be "yes" or "no".')
NOT_RERANKER = ("This model cannot rerank: /v1/rerank needs a cross-encoder (a sequence "
                "classification model served with --is-embedding) or a generation model whose "
                "tokenizer has 'yes' and 'no' tokens.")
MULTIMODAL = "Multimodal rerank inputs (content parts) are not supported by this server yet."


class V1RerankReqInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str | list[Any]
    documents: list[Any]
    instruct: str | None = None
    top_n: int | None = None
    return_documents: bool = True
    model: str = "default"

    @field_validator("top_n")
    @classmethod
    def _top_n_positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("parameter top_n should be larger than 0.")
        return value


def check_request(req: V1RerankReqInput) -> None:
    """SGLang's messages, in its order (OpenAIError 400)."""
    if not req.query:
        raise OpenAIError("Query cannot be empty")
    if isinstance(req.query, str) and not req.query.strip():
        raise OpenAIError("Query cannot be empty or whitespace only")
    if not req.documents:
        raise OpenAIError("Documents cannot be empty")
    for doc in req.documents:
        if not doc:
            raise OpenAIError("Each document must be a non-empty string")
        if isinstance(doc, str) and not doc.strip():
            raise OpenAIError("Each document cannot be empty or whitespace only")
    if not isinstance(req.query, str) or not all(isinstance(d, str) for d in req.documents):
        raise OpenAIError(MULTIMODAL)


def yes_no_parts(query: str, document: str, instruct: str | None) -> tuple[str, str, str]:
    """The Qwen3-Reranker prompt as (system prefix, instruction + query + document, answer
    prefix); each part is tokenized alone and the ids joined, as the model card does."""
    body = f"<Instruct>: {instruct or DEFAULT_INSTRUCT}\n<Query>: {query}\n<Document>: {document}"
    return (f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n<|im_start|>user\n", body,
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def yes_no_input_ids(tokenizer: Any, query: str, documents: list[str], instruct: str | None
                     ) -> list[list[int]]:
    parts = [yes_no_parts(query, d, instruct) for d in documents]
    prefix, _, suffix = parts[0]
    head, tail = (tokenizer.encode(t, add_special_tokens=False) for t in (prefix, suffix))
    bodies = tokenizer([p[1] for p in parts], add_special_tokens=False)["input_ids"]
    return [head + list(body) + tail for body in bodies]


def common_prefix(rows: list[list[int]]) -> list[int]:
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        n = next((i for i in range(n) if row[i] != first[i]), n)
    return first[:n]


def yes_no_ids(tm: TokenizerManager) -> tuple[int, int]:
    """The ``yes`` and ``no`` token ids (OpenAIError when the vocabulary lacks one)."""
    tok = tm.tokenizer
    if tok is None:
        raise OpenAIError(NOT_RERANKER)
    ids = []
    for word in ("yes", "no"):
        i = tok.convert_tokens_to_ids(word)
        if i is None or i == tok.unk_token_id:
            raise OpenAIError(NOT_RERANKER)
        ids.append(int(i))
    return ids[0], ids[1]


async def _wait(tm: TokenizerManager, states: list[ReqState], raw_request: Request) -> None:
    from sglang.srt.entrypoints.http_common import abort_unfinished, wait_all

    try:
        await wait_all(tm, states, raw_request)
    finally:
        await abort_unfinished(tm, states)
    if not all(s.finished for s in states):
        raise OpenAIError("The client disconnected.", 499, "ClientClosedRequest")


async def cross_encoder_scores(tm: TokenizerManager, req: V1RerankReqInput,
                               raw_request: Request) -> list[tuple[float, dict[str, Any]]]:
    if not tm.info.id2label:
        raise OpenAIError(NOT_RERANKER)
    obj = EmbeddingReqInput(text=[[req.query, d] for d in req.documents],
                            is_cross_encoder_request=True)
    with engine_errors():
        states, _ = await tm.encode(obj)
        await _wait(tm, states, raw_request)
    return [(float(s.embedding[0]), tm.embedding_response(s)["meta_info"]) for s in states]


async def yes_no_scores(tm: TokenizerManager, req: V1RerankReqInput,
                        raw_request: Request) -> list[tuple[float, dict[str, Any]]]:
    yes, no = yes_no_ids(tm)
    docs = [str(d) for d in req.documents]
    for d in docs:
        tm.validator.check_text(str(req.query) + d)
    rows = await tm.run_tokenizer(yes_no_input_ids, tm.tokenizer, str(req.query), docs,
                                  req.instruct)
    shared = common_prefix(rows)
    if len(rows) > 1 and len(shared) > 1:
        # The instruction and query first, alone: the documents then find them in the cache
        # (requests prefilled in one batch cannot share what none of them cached yet).
        await _run(tm, GenerateReqInput(input_ids=shared, sampling_params={"max_new_tokens": 0}),
                   raw_request)
    obj = GenerateReqInput(
        input_ids=rows, sampling_params={"max_new_tokens": 1, "temperature": 0.0},
        return_logprob=True, token_ids_logprob=[yes, no])  # fmt: skip
    states = await _run(tm, obj, raw_request)
    out = []
    for s in states:
        lps = {tok: lp for lp, tok in s.output_token_ids_logprobs[0]}
        score = 1.0 / (1.0 + math.exp(lps[no] - lps[yes]))  # softmax over (yes, no)
        meta = tm.response(s)["meta_info"]
        for key in [k for k in meta if "logprob" in k]:
            del meta[key]
        out.append((score, meta))
    return out


async def _run(tm: TokenizerManager, obj: GenerateReqInput, raw_request: Request
               ) -> list[ReqState]:
    with engine_errors():
        states, _ = await tm.generate(obj)
        await _wait(tm, states, raw_request)
    return states


async def create_rerank(tm: TokenizerManager, req: V1RerankReqInput,
                        raw_request: Request) -> list[dict[str, Any]]:
    check_request(req)
    if len(req.documents) > tm.args.max_batch_size:
        raise OpenAIError(f"The request holds {len(req.documents)} documents, more than the "
                          f"server's limit of {tm.args.max_batch_size} (--max-batch-size).")
    score = cross_encoder_scores if tm.info.is_embedding else yes_no_scores
    scored = await score(tm, req, raw_request)
    items = []
    for i, (value, meta) in enumerate(scored):
        item: dict[str, Any] = {"score": value}
        if req.return_documents:
            item["document"] = req.documents[i]
        item.update(index=i, meta_info=meta)
        items.append(item)
    items.sort(key=lambda x: x["score"], reverse=True)
    return items[: req.top_n] if req.top_n is not None else items


async def no_stream(tm: TokenizerManager, req: V1RerankReqInput, raw_request: Request) -> Any:
    raise OpenAIError("/v1/rerank does not stream.")


@router.api_route("/v1/rerank", methods=["POST", "PUT"],
                  openapi_extra={"requestBody": body_schema(V1RerankReqInput)})
async def rerank(raw_request: Request) -> Any:
    return await serve(raw_request, V1RerankReqInput, create_rerank, no_stream)
