"""The tokenizer manager: the HTTP process's side of generation.

It turns a ``/generate`` body into engine requests (normalise -> tokenize -> validate with the
``RequestValidator`` -> send through the ``EngineClient``), applies the engine's per-step outputs
to each request's ``ReqState`` (token ids, logprobs, incremental detokenization, finish reasons),
and hands states to the routes, which wait on them or stream them; the ``ResponseBuilder`` shapes
the replies. Used by the HTTP server and by the offline ``sgl.Engine``; runs on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sglang.srt.managers.detokenizer import IncrementalDetokenizer
from sglang.srt.managers.engine_client import EngineClient, EngineDeadError
from sglang.srt.managers.io_struct import (
    BatchTokenOut,
    FlushCacheReq,
    FlushCacheResp,
    GenerateReqInput,
    GetInternalStateReq,
    InternalStateResp,
    ReqOutput,
    RequestError,
    SingleGenerateReq,
    TokenizedGenerateReq,
)
from sglang.srt.managers.req_state import ReqState, RequestFailed
from sglang.srt.managers.request_validator import RequestValidator, embeds_namespace
from sglang.srt.managers.response_builder import ResponseBuilder, SentSoFar
from sglang.srt.sampling.sampling_params import SamplingParams, chat_sampling_defaults
from sglang.srt.server_args import ServerArgs

__all__ = ["EngineDeadError", "ReqState", "RequestFailed", "TokenizerManager"]

ENGINE_DIED = "The engine process died; the request could not be completed."


class TokenizerManager:
    def __init__(self, server_args: ServerArgs) -> None:
        self.args = server_args
        self.tokenizer = None
        if not server_args.skip_tokenizer_init:
            from sglang.srt.hf_transformers_utils import get_tokenizer

            self.tokenizer = get_tokenizer(server_args.tokenizer_path)
        self.rid_to_state: dict[str, ReqState] = {}
        self.engine = EngineClient(server_args, self)
        self.info = self.engine.info
        self.validator = RequestValidator(server_args, self.info)
        self.builder = ResponseBuilder(server_args.weight_version, self.tokenizer)
        # Defaults of the keys a /v1/chat/completions request omits (--sampling-defaults).
        self.chat_sampling_defaults = chat_sampling_defaults(server_args.sampling_defaults,
                                                             self.info.generation_config)

    # ---- engine ----------------------------------------------------------------------------------
    def start_loops(self) -> None:
        """Starts the engine client's tasks on the running event loop (call once)."""
        self.engine.start()

    @property
    def engine_dead(self) -> bool:
        return self.engine.dead

    @property
    def last_receive(self) -> float:
        return self.engine.last_receive

    def shutdown(self) -> None:
        self.engine.shutdown()

    async def flush_cache(self) -> bool:
        reply: FlushCacheResp = await self.engine.request(FlushCacheReq(), FlushCacheResp)
        return reply.success

    async def get_internal_state(self) -> dict[str, Any]:
        reply: InternalStateResp = await self.engine.request(GetInternalStateReq(),
                                                             InternalStateResp)
        return reply.state

    async def server_info(self) -> dict[str, Any]:
        """The /get_server_info object: server args, engine limits and the engine's state."""
        import sglang

        args = self.args.to_json()
        try:
            state = await self.get_internal_state()
        except (EngineDeadError, asyncio.TimeoutError):
            state = {}
        internal = {**args, **state, "memory_usage": self.info.memory_usage,
                    "chat_sampling_defaults": self.chat_sampling_defaults}
        return {**args, "status": "ready", "max_total_num_tokens": self.info.max_total_num_tokens,
                "max_req_input_len": self.info.max_req_input_len, "internal_states": [internal],
                "version": sglang.__version__}

    async def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        await self.engine.abort(rid, abort_all)

    # ---- engine listener -------------------------------------------------------------------------
    def on_batch(self, batch: BatchTokenOut) -> None:
        for out in batch.outputs:
            self._on_output(out)

    def on_request_error(self, error: RequestError) -> None:
        state = self.rid_to_state.get(error.rid)
        if state is not None:
            state.fail(error.message, error.status_code)

    def on_engine_death(self) -> None:
        for state in self.rid_to_state.values():
            state.fail(ENGINE_DIED, 500)

    def _on_output(self, out: ReqOutput) -> None:
        state = self.rid_to_state.get(out.rid)
        if state is None or state.finished:
            return
        state.cached_tokens = out.cached_tokens
        state.num_retractions = out.num_retractions
        state.output_ids.extend(out.new_token_ids)
        if out.output_token_logprobs:
            state.output_token_logprobs.extend(out.output_token_logprobs)
        if out.output_top_logprobs:
            state.output_top_logprobs.extend(out.output_top_logprobs)
        if out.output_token_ids_logprobs:
            state.output_token_ids_logprobs.extend(out.output_token_ids_logprobs)
        if out.hidden_states:
            state.hidden_states.extend(out.hidden_states)
        finish = out.finish_reason
        if finish is not None and finish.is_error:
            # The engine refused the request mid-way (e.g. its logit processor raised): an error.
            state.finish_reason = finish
            state.event.set()
            return
        if out.input_token_logprobs:
            state.input_token_logprobs = out.input_token_logprobs
            state.input_top_logprobs = out.input_top_logprobs or []
            state.input_token_ids_logprobs = out.input_token_ids_logprobs or []
        if state.detok is not None:
            feed = out.new_token_ids
            if finish is not None and finish.stopped_on_token and feed \
                    and not state.sampling.no_stop_trim:
                feed = feed[:-1]  # a matched stop token is not part of the text
            state.text = state.detok.add(feed)
            if finish is not None:
                state.text = state.detok.finish(finish.stop_string, state.sampling.no_stop_trim)
        state.finish_reason = finish
        state.event.set()

    # ---- requests --------------------------------------------------------------------------------
    def _tokenize(self, single: SingleGenerateReq) -> tuple[list[int], str]:
        """The prompt's token ids and its radix-cache namespace ('' for token prompts)."""
        if single.input_ids is not None:
            return list(single.input_ids), ""
        if single.input_embeds is not None:
            namespace = embeds_namespace(single.input_embeds, self.info.hidden_size)
            if single.return_logprob and single.logprob_start_len >= 0:
                raise ValueError("Prompt logprobs (logprob_start_len >= 0) are not available for "
                                 "input_embeds requests: their prompt has no token ids.")
            # Placeholder ids: the engine feeds the embeddings to the model in their place.
            return [0] * len(single.input_embeds), namespace
        if self.tokenizer is None:
            raise ValueError("text input needs a tokenizer; the server runs with "
                             "--skip-tokenizer-init, send input_ids instead.")
        return self.tokenizer.encode(single.text), ""

    def _make_state(self, single: SingleGenerateReq) -> tuple[ReqState, TokenizedGenerateReq]:
        if single.rid in self.rid_to_state:
            raise ValueError(f"Duplicate request ID: {single.rid}")
        input_ids, namespace = self._tokenize(single)
        self.validator.check_prompt(input_ids)
        sampling = self.validator.sampling_params(single, len(input_ids))
        detok = None
        if self.tokenizer is not None:
            detok = IncrementalDetokenizer(self.tokenizer, sampling.skip_special_tokens,
                                           sampling.spaces_between_special_tokens)
        state = ReqState(single=single, sampling=sampling, prompt_tokens=len(input_ids),
                         detok=detok, created=time.time())
        req = TokenizedGenerateReq(
            rid=single.rid,
            input_ids=input_ids,
            sampling=sampling,
            return_logprob=single.return_logprob,
            logprob_start_len=single.logprob_start_len,
            top_logprobs_num=single.top_logprobs_num,
            token_ids_logprob=single.token_ids_logprob,
            input_embeds=single.input_embeds,
            return_hidden_states=single.return_hidden_states,
            custom_logit_processor=single.custom_logit_processor,
            cache_namespace=namespace,
        )
        return state, req

    async def generate(self, obj: GenerateReqInput) -> tuple[list[ReqState], bool]:
        """Validates and submits every item of a /generate request; returns their states."""
        self.engine.check_alive()
        singles, is_list = obj.normalize()
        prepared = [self._make_state(s) for s in singles]  # validate all before sending any
        if singles and singles[0].parallel_sample_num > 1:
            await self._prefill_shared_prompts(prepared)
        for state, _ in prepared:
            self.rid_to_state[state.rid] = state
        await self.engine.send([req for _, req in prepared])
        return [state for state, _ in prepared], is_list

    async def _prefill_shared_prompts(
        self, prepared: list[tuple[ReqState, TokenizedGenerateReq]]
    ) -> None:
        """n > 1: one prefill-only request per prompt puts it in the prefix cache first."""
        seen: dict[int, TokenizedGenerateReq] = {}
        for state, req in prepared:
            seen.setdefault(state.single.prompt_index, req)
        warm = []
        for first in seen.values():
            rid = uuid.uuid4().hex
            ids = first.input_ids
            sampling = SamplingParams(max_new_tokens=0)
            single = SingleGenerateReq(rid=rid, input_ids=ids)
            state = ReqState(single=single, sampling=sampling, prompt_tokens=len(ids), detok=None,
                             created=time.time())
            self.rid_to_state[rid] = state
            warm.append(state)
            await self.engine.send(TokenizedGenerateReq(
                rid=rid, input_ids=ids, sampling=sampling, input_embeds=first.input_embeds,
                cache_namespace=first.cache_namespace))
        for state in warm:
            await self.wait(state)
            self.rid_to_state.pop(state.rid, None)

    async def wait(self, state: ReqState) -> None:
        while not state.finished:
            state.event.clear()
            await state.event.wait()

    def release(self, state: ReqState) -> None:
        self.rid_to_state.pop(state.rid, None)

    async def stream(self, state: ReqState) -> AsyncIterator[dict[str, Any]]:
        """Yields response chunks every stream_interval tokens, the last one with finish_reason."""
        interval = state.sampling.stream_interval or self.args.stream_interval
        sent = SentSoFar()
        while True:
            state.event.clear()
            if not state.finished and len(state.output_ids) - sent.num_tokens < interval:
                await state.event.wait()
            state.raise_if_failed()
            n = len(state.output_ids)
            if state.finished or n - sent.num_tokens >= interval:
                chunk = self.builder.response(
                    state, sent if self.args.incremental_streaming_output else None)
                sent = SentSoFar(n, state.text)
                yield chunk
                if state.finished:
                    return

    def response(self, state: ReqState) -> dict[str, Any]:
        return self.builder.response(state)
