"""The tokenizer manager: the HTTP process's side of generation.

It turns a ``/generate`` body into engine requests (normalise -> tokenize -> validate with the
``RequestValidator`` -> send through the ``EngineClient``, or the ``EngineGroup`` of
``--dp-size`` replicas), applies the engine's per-step outputs
to each request's ``ReqState`` (token ids, logprobs, incremental detokenization, finish reasons),
and hands states to the routes, which wait on them or stream them; the ``ResponseBuilder`` shapes
the replies. Used by the HTTP server and by the offline ``sgl.Engine``; runs on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sglang.srt.managers.detokenizer import IncrementalDetokenizer
from sglang.srt.managers.engine_client import EngineDeadError
from sglang.srt.managers.engine_group import engine_for
from sglang.srt.managers.io_struct import (
    IS_EMBEDDING_NEEDED,
    IS_GENERATION_NEEDED,
    BatchTokenOut,
    EmbeddingReqInput,
    ExpertDistributionReq,
    ExpertDistributionResp,
    FlushCacheReq,
    FlushCacheResp,
    GenerateReqInput,
    GetInternalStateReq,
    InternalStateResp,
    LoadLoraAdapterReq,
    LoraAdapterResp,
    ReqOutput,
    RequestError,
    SingleGenerateReq,
    TokenizedGenerateReq,
    UnloadLoraAdapterReq,
    UpdateWeightFromDiskReqInput,
    UpdateWeightsFromDiskReq,
    UpdateWeightsFromDiskResp,
)
from sglang.srt.managers.req_state import ReqState, RequestFailed
from sglang.srt.managers.request_validator import RequestValidator, embeds_namespace
from sglang.srt.managers.response_builder import ResponseBuilder, SentSoFar
from sglang.srt.multimodal.inputs import ImageInputs
from sglang.srt.multimodal.processor import ImageProcessor
from sglang.srt.sampling.sampling_params import SamplingParams, chat_sampling_defaults
from sglang.srt.server_args import ServerArgs

# A weight update may load a large checkpoint: the engine's reply is awaited this long.
WEIGHT_UPDATE_TIMEOUT_S = 3600.0

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
        self.engine = engine_for(server_args, self)
        try:
            self.info = self.engine.spawn()
        except BaseException:  # close its sockets now: a leaked ZMQ context can hang at exit
            self.engine.shutdown()
            raise
        # "starting" (the HTTP server's warm-up request has not finished) | "ready" |
        # "restarting" | "dead". Health checks pass only when "ready".
        self.status = "ready"
        self.engine_restarts = 0
        # Called once the engine process is found dead (after its requests failed): the HTTP
        # server restarts the engine (--engine-restart) or shuts down with an error.
        self.on_engine_death_hooks: list[Any] = []
        self.metrics = None
        if server_args.enable_metrics:
            from sglang.srt.metrics.collector import MetricsCollector

            self.metrics = MetricsCollector(server_args.served_model_name)
        self.validator = RequestValidator(server_args, self.info, self.tokenizer)
        # The engine's adapters (name -> folder), refreshed by each load / unload reply.
        self.lora_adapters: dict[str, str] = dict(self.info.lora_adapters)
        self.lora_lock = asyncio.Lock()
        # A vision-language model's image processor (runs on the tokenize thread).
        self.image_processor = _image_processor(server_args, self.info)
        # Tokenization and detokenization run off the event loop (one thread each: the tokenizer
        # releases the GIL), so a large prompt never stalls health checks or other clients.
        self.tokenize_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sglang-tokenize")
        self.detokenize_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sglang-detokenize")
        self.builder = ResponseBuilder(server_args.weight_version, self.tokenizer)
        # Cleared while weights are updated: new requests wait, in-flight ones finish first.
        self.weights_ready = asyncio.Event()
        self.weights_ready.set()
        self.update_lock = asyncio.Lock()
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

    def check_serving(self) -> None:
        """Raises EngineDeadError (HTTP 503) unless the engine can take requests."""
        if self.status == "restarting":
            raise EngineDeadError("The engine is restarting after a failure; retry shortly.")
        self.engine.check_alive()

    async def restart_engine(self) -> None:
        """Replaces the dead engine process with a new one (--engine-restart). Requests are
        refused with 503 meanwhile. RuntimeError when the new engine fails to start."""
        self.status = "restarting"
        self.engine.shutdown()
        client = engine_for(self.args, self)
        try:
            info = await asyncio.get_running_loop().run_in_executor(None, client.spawn)
        except Exception:
            self.status = "dead"
            client.shutdown()
            raise
        self.engine = client
        self.lora_adapters = dict(info.lora_adapters)  # adapters loaded at run time are gone
        client.start()
        self.engine_restarts += 1
        if self.metrics is not None:
            self.metrics.on_engine_restart()
        self.status = "ready"

    def warming_up(self) -> None:
        """The HTTP server sends a warm-up request before it reports ready."""
        self.status = "starting"

    def warm(self) -> None:
        """The warm-up request ended (an engine that died meanwhile keeps its status)."""
        if self.status == "starting":
            self.status = "ready"

    @property
    def last_receive(self) -> float:
        return self.engine.last_receive

    def shutdown(self) -> None:
        self.engine.shutdown()
        self.tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self.detokenize_pool.shutdown(wait=False, cancel_futures=True)

    async def run_tokenizer(self, fn: Any, *args: Any) -> Any:
        """Runs a tokenizer call on the tokenize thread."""
        return await asyncio.get_running_loop().run_in_executor(self.tokenize_pool, fn, *args)

    async def run_detokenizer(self, fn: Any, *args: Any) -> Any:
        """Runs a detokenizer call on the detokenize thread."""
        return await asyncio.get_running_loop().run_in_executor(self.detokenize_pool, fn, *args)

    async def flush_cache(self) -> bool:
        reply: FlushCacheResp = await self.engine.request(FlushCacheReq(), FlushCacheResp)
        return reply.success

    async def update_weights_from_disk(self, obj: UpdateWeightFromDiskReqInput
                                       ) -> tuple[bool, str, int]:
        """Swap in the weights of ``obj.model_path`` (contract 2.6): new requests wait while the
        requests in flight finish (or are aborted with ``abort_all_requests``), then the engine
        loads the checkpoint and flushes the radix cache. (success, message,
        num_paused_requests). One update at a time."""
        async with self.update_lock:
            self.weights_ready.clear()
            try:
                if obj.abort_all_requests:
                    await self.abort_request(abort_all=True)
                while any(not s.finished for s in self.rid_to_state.values()):
                    self.engine.check_alive()
                    await asyncio.sleep(0.005)
                req = UpdateWeightsFromDiskReq(obj.model_path, obj.load_format, obj.flush_cache)
                reply: UpdateWeightsFromDiskResp = await self.engine.request(
                    req, UpdateWeightsFromDiskResp, timeout=WEIGHT_UPDATE_TIMEOUT_S)
            finally:
                self.weights_ready.set()
        message = reply.message
        if reply.success:  # the server now serves that checkpoint (as SGLang reports it)
            self.args.model_path = obj.model_path
            self.args.load_format = obj.load_format or self.args.load_format
        if reply.success and obj.weight_version is not None:
            self.args.weight_version = self.builder.weight_version = obj.weight_version
            message += f" Weight version updated to {obj.weight_version}."
        return reply.success, message, 0

    async def expert_distribution(self, action: str) -> None:
        """start / stop / dump the engine's expert-distribution recorder; ValueError (400) when
        it is off (no --expert-distribution-recorder-mode) or the dump cannot be written."""
        reply: ExpertDistributionResp = await self.engine.request(
            ExpertDistributionReq(action), ExpertDistributionResp)
        if not reply.success:
            raise ValueError(reply.message)

    async def get_internal_states(self) -> list[dict[str, Any]]:
        """Each engine replica's internal state (one with --dp-size 1)."""
        replies: list[InternalStateResp] = await self.engine.request_each(
            GetInternalStateReq(), InternalStateResp)
        return [reply.state for reply in replies]

    async def get_internal_state(self) -> dict[str, Any]:
        """The engine's internal state; with --dp-size > 1 the replicas' counters summed (for
        the metrics' gauges)."""
        states = await self.get_internal_states()
        return states[0] if len(states) == 1 else _summed(states)

    async def server_info(self) -> dict[str, Any]:
        """The /get_server_info object: server args, engine limits (of one replica) and each
        engine replica's state (``internal_states``, in replica order; ``dp_rank`` in each)."""
        import sglang

        args = self.args.to_json()
        try:
            states = await self.get_internal_states()
        except (EngineDeadError, asyncio.TimeoutError):
            states = [{} for _ in range(self.args.dp_size)]
        internal = [{**args, **state, "dp_rank": rank, "memory_usage": self.info.memory_usage,
                     "chat_sampling_defaults": self.chat_sampling_defaults}
                    for rank, state in enumerate(states)]
        return {**args, "status": self.status, "engine_restarts": self.engine_restarts,
                "max_total_num_tokens": self.info.max_total_num_tokens,
                "max_req_input_len": self.info.max_req_input_len, "internal_states": internal,
                "version": sglang.__version__}

    async def metrics_text(self) -> tuple[bytes, str]:
        """The /metrics page: the engine's gauges as of now, then every metric."""
        assert self.metrics is not None
        try:
            self.metrics.set_engine_state(await self.get_internal_state())
        except (EngineDeadError, asyncio.TimeoutError):
            pass  # the last values stay
        return self.metrics.render()

    async def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        await self.engine.abort(rid, abort_all)

    # ---- engine listener -------------------------------------------------------------------------
    async def on_batch(self, batch: BatchTokenOut) -> None:
        """Applies one engine step. The new text is computed on the detokenize thread first; then
        tokens, logprobs, text and finish reasons are applied together, so no reader sees ids
        without their text or a finished request whose text is not final."""
        live = []
        for out in batch.outputs:
            state = self.rid_to_state.get(out.rid)
            if state is None or state.finished:
                continue
            if out.finish_reason is not None and out.finish_reason.is_error:
                # The engine refused the request mid-way (e.g. its logit processor raised).
                state.finish_reason = out.finish_reason
                state.event.set()
                continue
            live.append((state, out))
        texts: list[str | None] = [None] * len(live)
        if any(state.detok is not None for state, _ in live):
            texts = await self.run_detokenizer(_detokenize, live)
        now = time.time()
        for (state, out), text in zip(live, texts):
            if state.finished:  # failed while the text was computed (the engine died)
                continue
            if out.new_token_ids:
                if self.metrics is not None and not state.internal:
                    self.metrics.on_tokens(state, len(out.new_token_ids), now)
                if state.first_token_time is None:
                    state.first_token_time = now
                state.last_token_time = now
            _apply_output(state, out)
            if text is not None:
                state.text = text
            state.finish_reason = out.finish_reason
            state.event.set()

    def on_request_error(self, error: RequestError) -> None:
        state = self.rid_to_state.get(error.rid)
        if state is not None:
            state.fail(error.message, error.status_code)

    def on_engine_death(self) -> None:
        self.status = "dead"
        for state in self.rid_to_state.values():
            state.fail(ENGINE_DIED, 500)
        for hook in self.on_engine_death_hooks:
            hook()

    # ---- requests --------------------------------------------------------------------------------
    def _tokenize(self, single: SingleGenerateReq) -> tuple[list[int], str, ImageInputs | None]:
        """The prompt's token ids, its radix-cache namespace ('' for token prompts) and its
        images. Runs on the tokenize thread."""
        ids, namespace = self._tokenize_text(single)
        if not single.image_data:
            return ids, namespace, None
        if self.image_processor is None:
            raise ValueError(f"image_data: the model {self.info.architectures[0]} does not take "
                             "images (serve a vision-language model).")
        if single.input_embeds is not None:
            raise ValueError("image_data cannot be combined with input_embeds.")
        ids, images = self.image_processor.process(ids, single.image_data)
        return ids, namespace, images

    def _tokenize_text(self, single: SingleGenerateReq) -> tuple[list[int], str]:
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

    def _tokenize_prompts(self, singles: list[SingleGenerateReq]) -> dict[int, tuple]:
        """Each distinct prompt's (ids, namespace), by prompt index (n samples share one)."""
        out: dict[int, tuple] = {}
        for single in singles:
            if single.prompt_index not in out:
                out[single.prompt_index] = self._tokenize(single)
        return out

    def _make_state(self, single: SingleGenerateReq, input_ids: list[int], namespace: str,
                    images: ImageInputs | None = None) -> tuple[ReqState, TokenizedGenerateReq]:
        if single.rid in self.rid_to_state:
            raise ValueError(f"Duplicate request ID: {single.rid}")
        self.validator.check_prompt(input_ids)
        self._check_lora(single.lora_path)
        self.validator.check_logprob_options(single, len(input_ids))
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
            images=images,
            lora_name=single.lora_path,
        )
        return state, req

    def _check_lora(self, name: str | None) -> None:
        """A 400 for an adapter this server cannot run (the engine checks again on arrival:
        an unload may come in between)."""
        if name is None:
            return
        if not self.info.lora_enabled:
            raise ValueError("lora_path: LoRA adapters are not enabled on this server; start it "
                             "with --enable-lora (or --lora-paths).")
        if name not in self.lora_adapters:
            known = ", ".join(sorted(self.lora_adapters)) or "none"
            raise ValueError(f"lora_path: unknown LoRA adapter '{name}' (loaded: {known}).")

    async def load_lora_adapter(self, name: str, path: str) -> LoraAdapterResp:
        """Loads an adapter in the engine (``/load_lora_adapter``); the reply lists the adapters
        served afterwards. A refusal (bad folder, rank, targets, name) has success False."""
        return await self._lora_update(LoadLoraAdapterReq(name, path))

    async def unload_lora_adapter(self, name: str) -> LoraAdapterResp:
        return await self._lora_update(UnloadLoraAdapterReq(name))

    async def _lora_update(self, msg: Any) -> LoraAdapterResp:
        self.check_serving()
        if not self.info.lora_enabled:
            return LoraAdapterResp(False, "LoRA adapters are not enabled on this server; start "
                                   "it with --enable-lora (or --lora-paths).", {})
        async with self.lora_lock:
            reply: LoraAdapterResp = await self.engine.request(
                msg, LoraAdapterResp, timeout=WEIGHT_UPDATE_TIMEOUT_S)
            self.lora_adapters = dict(reply.loaded_adapters)
        return reply

    async def generate(self, obj: GenerateReqInput,
                       internal: bool = False) -> tuple[list[ReqState], bool]:
        """Validates and submits every item of a /generate request; returns their states.
        ValueError (HTTP 400) for an invalid request, before anything is sent; EngineDeadError
        (503) while the engine cannot serve; RequestFailed when the n > 1 prefill fails.
        ``internal``: the server's own request (health checks), left out of the metrics."""
        await self._serving(embedding=False)
        self.validator.check_request(obj)
        singles, is_list = obj.normalize()
        for single in singles:
            if single.text is not None:
                self.validator.check_text(single.text)
        prompts = await self.run_tokenizer(self._tokenize_prompts, singles)
        prepared = [self._make_state(s, *prompts[s.prompt_index]) for s in singles]
        for state, _ in prepared:
            state.internal = internal
        if singles and singles[0].parallel_sample_num > 1:
            await self._prefill_shared_prompts(prepared)
        return await self._send(prepared), is_list

    async def encode(self, obj: EmbeddingReqInput,
                     internal: bool = False) -> tuple[list[ReqState], bool]:
        """Validates and submits every input of an /encode request; returns their states (each
        finishes with its ``embedding``). ValueError (400) for an invalid request or a server
        that does not serve embeddings, before anything is sent."""
        await self._serving(embedding=True)
        self.validator.check_embedding_request(obj)
        singles, is_list = obj.normalize()
        for single in singles:
            if single.text is not None:
                self.validator.check_text(single.text)
            if single.rid in self.rid_to_state:
                raise ValueError(f"Duplicate request ID: {single.rid}")
        types: list[Any] = [None] * len(singles)
        if obj.is_pairs:
            batch, types = await self._tokenize_pairs(singles)
            prompts = {s.prompt_index: (ids, "") for s, ids in zip(singles, batch)}
        elif self.tokenizer is not None and all(s.text is not None for s in singles):
            # One batched call (the fast tokenizers encode a batch in parallel).
            texts = [s.text for s in singles]
            batch = await self.run_tokenizer(lambda: self.tokenizer(texts)["input_ids"])
            prompts = {s.prompt_index: (list(ids), "") for s, ids in zip(singles, batch)}
        else:
            prompts = await self.run_tokenizer(self._tokenize_prompts, singles)
        prepared = []
        for single, token_types in zip(singles, types, strict=True):
            ids = prompts[single.prompt_index][0]
            self.validator.check_embedding_prompt(ids)
            sampling = SamplingParams(max_new_tokens=0)
            state = ReqState(single=single, sampling=sampling, prompt_tokens=len(ids),
                             detok=None, created=time.time(), internal=internal)
            prepared.append((state, TokenizedGenerateReq(
                rid=single.rid, input_ids=ids, sampling=sampling, dimensions=obj.dimensions,
                token_type_ids=token_types)))
        return await self._send(prepared), is_list

    async def _tokenize_pairs(self, singles: list[SingleGenerateReq]
                              ) -> tuple[list[list[int]], list[list[int] | None]]:
        """Cross-encoder (query, document) pairs as the tokenizer joins them (``[CLS] q [SEP] d
        [SEP]``, ``<s> q </s></s> d </s>``, ...), with each token's segment where it has them.
        ValueError unless the model is a cross-encoder (a classifier) with a tokenizer."""
        if not self.info.id2label:
            raise ValueError("Text pairs ([[query, document], ...]) need a cross-encoder "
                             "(sequence classification) model; this one is not.")
        if self.tokenizer is None:
            raise ValueError("Text pairs need the tokenizer (the server runs with "
                             "--skip-tokenizer-init): send input_ids instead.")
        for s in singles:
            self.validator.check_text((s.text or "") + (s.text_pair or ""))
        queries = [s.text or "" for s in singles]
        docs = [s.text_pair or "" for s in singles]
        enc = await self.run_tokenizer(lambda: self.tokenizer(queries, docs))
        types = enc.get("token_type_ids")
        ids = [list(i) for i in enc["input_ids"]]
        return ids, ([list(t) for t in types] if types is not None else [None] * len(ids))

    async def _serving(self, embedding: bool) -> None:
        """What every new request passes first: it waits out a weight update, then the engine
        must be up and serve this kind of request (generation or embeddings)."""
        await self.weights_ready.wait()
        self.check_serving()
        if embedding != self.info.is_embedding:
            raise ValueError(IS_EMBEDDING_NEEDED if embedding else IS_GENERATION_NEEDED)

    async def _send(self, prepared: list[tuple[ReqState, TokenizedGenerateReq]]
                    ) -> list[ReqState]:
        """Registers the states and sends their requests to the engine in one message (nothing
        stays registered when the engine is dead)."""
        for state, _ in prepared:
            self.rid_to_state[state.rid] = state
        try:
            await self.engine.send([req for _, req in prepared])
        except EngineDeadError:
            for state, _ in prepared:
                self.rid_to_state.pop(state.rid, None)
            raise
        return [state for state, _ in prepared]

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
                             created=time.time(), internal=True)
            self.rid_to_state[rid] = state
            warm.append(state)
            await self.engine.send(TokenizedGenerateReq(
                rid=rid, input_ids=ids, sampling=sampling, input_embeds=first.input_embeds,
                cache_namespace=first.cache_namespace, images=first.images,
                lora_name=first.lora_name))
        for state in warm:
            await self.wait(state)
            self.rid_to_state.pop(state.rid, None)
        for state in warm:
            state.raise_if_failed()

    async def wait(self, state: ReqState) -> None:
        while not state.finished:
            state.event.clear()
            await state.event.wait()

    def release(self, state: ReqState) -> None:
        """Forgets a request the route is done with (once per request: it is counted here)."""
        if self.rid_to_state.pop(state.rid, None) is not None and self.metrics is not None \
                and not state.internal:
            self.metrics.on_release(state)

    async def stream(self, state: ReqState) -> AsyncIterator[dict[str, Any]]:
        """Yields response chunks every stream_interval tokens, the last one with finish_reason."""
        interval = max(1, state.sampling.stream_interval or self.args.stream_interval)
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

    def embedding_response(self, state: ReqState) -> dict[str, Any]:
        return self.builder.embedding_response(state)


def _image_processor(args: ServerArgs, info: Any) -> ImageProcessor | None:
    if not info.image_understanding:
        return None
    from sglang.srt.hf_transformers_utils import get_config
    from sglang.srt.model_loader.resolve import resolve_model_path

    source = resolve_model_path(args.model_path)
    return ImageProcessor.for_model(info.architectures[0], str(source.folder),
                                    get_config(source, args.trust_remote_code), info.vocab_size,
                                    info.hidden_size)


def _summed(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The replicas' states as one: numbers added up, flags true when true for every replica."""
    out: dict[str, Any] = {}
    for key, value in states[0].items():
        values = [s.get(key, value) for s in states]
        if isinstance(value, bool):
            out[key] = all(values)
        elif isinstance(value, (int, float)):
            out[key] = sum(values)
        else:
            out[key] = value
    return out


def _apply_output(state: ReqState, out: ReqOutput) -> None:
    """Adds one engine output's tokens, logprobs and hidden states to its request."""
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
    if out.embedding is not None:
        state.embedding = out.embedding
    if out.input_token_logprobs:
        state.input_token_logprobs = out.input_token_logprobs
        state.input_top_logprobs = out.input_top_logprobs or []
        state.input_token_ids_logprobs = out.input_token_ids_logprobs or []


def _detokenize(live: list[tuple[ReqState, ReqOutput]]) -> list[str | None]:
    """The text of each request after its new tokens (None without a detokenizer). Runs on the
    detokenize thread, the only user of the requests' IncrementalDetokenizers: a matched stop
    token is not part of the text; a finished request's text is flushed and trimmed at its stop
    string."""
    texts: list[str | None] = []
    for state, out in live:
        if state.detok is None:
            texts.append(None)
            continue
        finish = out.finish_reason
        feed = out.new_token_ids
        if finish is not None and finish.stopped_on_token and feed \
                and not state.sampling.no_stop_trim:
            feed = feed[:-1]
        text = state.detok.add(feed)
        if finish is not None:
            text = state.detok.finish(finish.stop_string, state.sampling.no_stop_trim)
        texts.append(text)
    return texts
