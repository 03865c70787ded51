"""Shapes the ``/generate`` reply of a request from its ``ReqState``: the final object or a chunk.

The contract's shape (section 2.1): ``text`` (absent without a tokenizer), ``output_ids`` and
``meta_info`` with its keys in the contract's order; logprob entries as ``[logprob, token_id,
text|null]``. A stream chunk is the same object; with ``--incremental-streaming-output`` it holds
only what came after ``since`` (the output length and text already sent). Reads states; changes
nothing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sglang.srt.managers.req_state import ReqState


@dataclasses.dataclass(frozen=True)
class SentSoFar:
    """What a stream has sent: the output length and the text."""

    num_tokens: int = 0
    text: str = ""


class ResponseBuilder:
    def __init__(self, weight_version: str, tokenizer: Any) -> None:
        self.weight_version = weight_version
        self.tokenizer = tokenizer
        self._token_text: dict[int, str] = {}  # bounded by the vocabulary

    def token_text(self, token: int) -> str:
        """The text of one token (return_text_in_logprobs), decoded once per token id."""
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    def response(self, state: ReqState, since: SentSoFar | None = None) -> dict[str, Any]:
        """The reply object of a request as of now; ``since`` gives an incremental chunk."""
        ids = state.output_ids
        text = state.text
        start = 0
        if since is not None:
            start = since.num_tokens
            ids = ids[start:]
            text = text[len(since.text):]
        finish = state.finish_reason
        meta: dict[str, Any] = {
            "id": state.rid,
            "finish_reason": None if finish is None else finish.to_json(),
            "prompt_tokens": state.prompt_tokens,
            "weight_version": self.weight_version,
            "num_retractions": state.num_retractions,
        }
        if state.single.return_logprob:
            self._add_logprobs(state, meta, start)
        meta["reasoning_tokens"] = 0
        meta["completion_tokens"] = len(state.output_ids)
        meta["cached_tokens"] = state.cached_tokens
        if state.single.return_hidden_states:
            meta["hidden_states"] = state.hidden_states[start:]
        if finish is not None:
            meta["e2e_latency"] = time.time() - state.created
            meta["response_sent_to_client_ts"] = time.time()
        out: dict[str, Any] = {}
        if self.tokenizer is not None:
            out["text"] = text
        out["output_ids"] = list(ids)
        out["meta_info"] = meta
        return out

    def embedding_response(self, state: ReqState) -> dict[str, Any]:
        """The /encode reply object of a finished embedding request."""
        finish = state.finish_reason
        meta = {
            "id": state.rid,
            "finish_reason": None if finish is None else finish.to_json(),
            "prompt_tokens": state.prompt_tokens,
            "weight_version": self.weight_version,
            "num_retractions": state.num_retractions,
            "e2e_latency": time.time() - state.created,
        }
        embedding: Any = state.embedding
        if state.single.text_pair is not None and embedding is not None and len(embedding) == 1:
            embedding = float(embedding[0])  # a cross-encoder pair's score, as SGLang sends it
        return {"embedding": embedding, "meta_info": meta}

    def _add_logprobs(self, state: ReqState, meta: dict[str, Any], start: int) -> None:
        single = state.single
        with_text = single.return_text_in_logprobs and self.tokenizer is not None

        def entry(lp: float | None, tok: int) -> list[Any]:
            text = self.token_text(tok) if with_text else None
            return [lp, tok, text]

        def entries(items: list[Any] | None) -> list[Any] | None:
            if items is None:
                return None
            return [entry(lp, tok) for lp, tok in items]

        first = start == 0
        meta["input_token_logprobs"] = [entry(lp, t) for lp, t in state.input_token_logprobs] \
            if first else []
        meta["output_token_logprobs"] = [entry(lp, t) for lp, t in
                                         state.output_token_logprobs[start:]]
        meta["output_token_logprobs_length"] = len(state.output_token_logprobs)
        if single.top_logprobs_num > 0:
            meta["input_top_logprobs"] = [entries(x) for x in state.input_top_logprobs] \
                if first else []
            meta["output_top_logprobs"] = [entries(x) for x in state.output_top_logprobs[start:]]
        if single.token_ids_logprob:
            meta["input_token_ids_logprobs"] = [entries(x) for x in
                                                state.input_token_ids_logprobs] if first else []
            meta["output_token_ids_logprobs"] = [entries(x) for x in
                                                 state.output_token_ids_logprobs[start:]]
