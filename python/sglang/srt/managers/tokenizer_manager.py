"""The tokenizer manager: the HTTP process's side of generation.

It starts the engine process, tokenizes and validates requests, sends them over ZMQ, receives the
engine's per-step token batches, detokenizes them incrementally, and turns them into the
``/generate`` response dicts (streamed chunks or one final object). It also watches the engine:
if the engine process dies, pending requests end with an error and ``healthy`` turns false.
Used by the HTTP server and by the offline ``sgl.Engine``; everything here runs on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from sglang.srt.constrained.base_grammar_backend import check_grammar_supported, grammar_key
from sglang.srt.managers.detokenizer import IncrementalDetokenizer
from sglang.srt.managers.io_struct import (
    AbortReq,
    BatchTokenOut,
    EngineReady,
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
from sglang.srt.managers.stop_checker import compile_stop_regex
from sglang.srt.sampling.custom_logit_processor import load_custom_logit_processor
from sglang.srt.sampling.sampling_params import SamplingParams, chat_sampling_defaults
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger("sglang.tokenizer_manager")
ENGINE_START_TIMEOUT_S = float(os.environ.get("SGLANG_ENGINE_START_TIMEOUT", "1800"))


class EngineDeadError(RuntimeError):
    pass


@dataclasses.dataclass
class ReqState:
    single: SingleGenerateReq
    sampling: SamplingParams
    prompt_tokens: int
    detok: IncrementalDetokenizer | None
    created: float
    event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    output_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: dict[str, Any] | None = None
    cached_tokens: int = 0
    num_retractions: int = 0
    error: tuple[str, int] | None = None
    output_token_logprobs: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    output_top_logprobs: list[Any] = dataclasses.field(default_factory=list)
    output_token_ids_logprobs: list[Any] = dataclasses.field(default_factory=list)
    input_token_logprobs: list[Any] = dataclasses.field(default_factory=list)
    input_top_logprobs: list[Any] = dataclasses.field(default_factory=list)
    input_token_ids_logprobs: list[Any] = dataclasses.field(default_factory=list)
    hidden_states: list[Any] = dataclasses.field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None


class TokenizerManager:
    def __init__(self, server_args: ServerArgs) -> None:
        self.args = server_args
        self.tokenizer = None
        if not server_args.skip_tokenizer_init:
            from sglang.srt.hf_transformers_utils import get_tokenizer

            self.tokenizer = get_tokenizer(server_args.tokenizer_path)
        self.ipc_dir = tempfile.mkdtemp(prefix="sglang-ipc-")
        self.ipc_to_engine = f"ipc://{self.ipc_dir}/to_engine"
        self.ipc_from_engine = f"ipc://{self.ipc_dir}/from_engine"
        self.ctx = zmq.asyncio.Context()
        self.send_sock = self.ctx.socket(zmq.PUSH)
        self.send_sock.bind(self.ipc_to_engine)
        self.recv_sock = self.ctx.socket(zmq.PULL)
        self.recv_sock.bind(self.ipc_from_engine)
        self.engine_proc, self.info = self._start_engine()
        self.rid_to_state: dict[str, ReqState] = {}
        self.pending_replies: dict[type, asyncio.Queue] = {}
        self.engine_dead = False
        self.last_receive = time.time()
        self.loop_tasks: list[asyncio.Task] = []
        self.preferred = server_args.preferred_sampling_params_dict
        # Defaults of the keys a /v1/chat/completions request omits (--sampling-defaults).
        self.chat_sampling_defaults = chat_sampling_defaults(server_args.sampling_defaults,
                                                             self.info.generation_config)
        self._closed = False

    # ---- engine process ------------------------------------------------------------------------
    def _start_engine(self) -> tuple[mp.Process, EngineReady]:
        from sglang.srt.managers.engine_process import run_engine_process

        ctx = mp.get_context("spawn")
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=run_engine_process,
            args=(self.args, self.ipc_to_engine, self.ipc_from_engine, writer),
            daemon=True,
        )
        proc.start()
        writer.close()
        deadline = time.time() + ENGINE_START_TIMEOUT_S
        while time.time() < deadline:
            if reader.poll(0.5):
                try:
                    kind, payload = reader.recv()
                except EOFError:
                    break
                if kind == "ready":
                    return proc, payload
                proc.join(10)
                raise RuntimeError(f"The engine failed to start: {payload}")
            if not proc.is_alive():
                break
        code = proc.exitcode
        proc.kill()
        raise RuntimeError(f"The engine process exited during start-up (exit code {code}).")

    def start_loops(self) -> None:
        """Starts the receive and watchdog tasks on the running event loop (call once)."""
        if self.loop_tasks:
            return
        loop = asyncio.get_running_loop()
        self.loop_tasks = [loop.create_task(self._recv_loop()), loop.create_task(self._watchdog())]

    async def _recv_loop(self) -> None:
        while True:
            msg = await self.recv_sock.recv_pyobj()
            self.last_receive = time.time()
            if isinstance(msg, BatchTokenOut):
                for out in msg.outputs:
                    self._on_output(out)
            elif isinstance(msg, RequestError):
                state = self.rid_to_state.get(msg.rid)
                if state is not None:
                    state.error = (msg.message, msg.status_code)
                    state.event.set()
            else:
                queue = self.pending_replies.get(type(msg))
                if queue is not None:
                    queue.put_nowait(msg)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.engine_proc.is_alive():
                self._mark_engine_dead()
                return

    def _mark_engine_dead(self) -> None:
        if self.engine_dead:
            return
        self.engine_dead = True
        logger.error("the engine process died (exit code %s)", self.engine_proc.exitcode)
        for state in self.rid_to_state.values():
            if not state.finished:
                state.error = ("The engine process died; the request could not be completed.", 500)
                state.event.set()
        for queue in self.pending_replies.values():
            queue.put_nowait(None)

    async def _request_reply(self, msg: Any, reply_type: type, timeout: float = 60.0) -> Any:
        if self.engine_dead:
            raise EngineDeadError("The engine process is not running.")
        queue = self.pending_replies.setdefault(reply_type, asyncio.Queue())
        await self.send_sock.send_pyobj(msg)
        reply = await asyncio.wait_for(queue.get(), timeout)
        if reply is None:
            raise EngineDeadError("The engine process is not running.")
        return reply

    async def flush_cache(self) -> bool:
        reply: FlushCacheResp = await self._request_reply(FlushCacheReq(), FlushCacheResp)
        return reply.success

    async def get_internal_state(self) -> dict[str, Any]:
        reply: InternalStateResp = await self._request_reply(GetInternalStateReq(),
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
        if not self.engine_dead:
            await self.send_sock.send_pyobj(AbortReq(rid=rid, abort_all=abort_all))

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self.loop_tasks:
            task.cancel()
        if self.engine_proc.is_alive():
            # SIGTERM: shutdown may run outside the event loop that owns the sockets.
            self.engine_proc.terminate()
            self.engine_proc.join(5)
            if self.engine_proc.is_alive():
                self.engine_proc.kill()
                self.engine_proc.join(5)
        self.send_sock.close(0)
        self.recv_sock.close(0)
        self.ctx.term()

    # ---- outputs ---------------------------------------------------------------------------------
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
        if finish is not None and finish.get("type") == "abort" and finish.get("status_code"):
            # The engine refused the request mid-way (e.g. its logit processor raised): an error.
            state.error = (finish.get("message") or "Aborted", int(finish["status_code"]))
            state.event.set()
            return
        if out.input_token_logprobs:
            state.input_token_logprobs = out.input_token_logprobs
            state.input_top_logprobs = out.input_top_logprobs or []
            state.input_token_ids_logprobs = out.input_token_ids_logprobs or []
        if state.detok is not None:
            feed = out.new_token_ids
            finish = out.finish_reason
            stop_token = (finish is not None and finish.get("type") == "stop"
                          and isinstance(finish.get("matched"), int))
            if stop_token and feed and not state.sampling.no_stop_trim:
                feed = feed[:-1]  # a matched stop token is not part of the text
            state.text = state.detok.add(feed)
            if finish is not None:
                matched = finish.get("matched") if finish.get("type") == "stop" else None
                state.text = state.detok.finish(
                    matched if isinstance(matched, str) else None, state.sampling.no_stop_trim)
        state.finish_reason = out.finish_reason
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

    def _validate(self, single: SingleGenerateReq, input_ids: list[int]) -> SamplingParams:
        vocab = self.info.vocab_size
        for t in input_ids:
            if not isinstance(t, int) or t < 0 or t >= vocab:
                raise ValueError(f"Input token id {t} is out of the vocabulary range [0, {vocab}).")
        raw = dict(self.preferred or {})
        raw.update(single.sampling_params)
        raw.pop("n", None)
        sampling = SamplingParams.from_dict(raw)
        sampling.verify(vocab)
        compile_stop_regex(sampling.stop_regex_list)
        sampling.normalize()
        if self.args.skip_tokenizer_init:
            require_tokenizer(sampling)
        key = grammar_key(sampling)
        if key is not None:
            check_grammar_supported(self.args.grammar_backend, key)
        if single.custom_logit_processor:
            if not self.args.enable_custom_logit_processor:
                raise ValueError(
                    "The server is not configured to enable custom logit processor. Please set "
                    "`--enable-custom-logit-processor` to enable this feature."
                )
            load_custom_logit_processor(single.custom_logit_processor)  # 400 when malformed
        if single.return_hidden_states and not self.args.enable_return_hidden_states:
            raise ValueError(
                "The server is not configured to return hidden states. Please set "
                "`--enable-return-hidden-states` to enable this feature."
            )
        context = self.info.context_length
        n = len(input_ids)
        if n >= context:
            raise ValueError(
                f"The input ({n} tokens) is longer than the model's context length "
                f"({context} tokens)."
            )
        if sampling.max_new_tokens is not None and n + sampling.max_new_tokens >= context:
            if self.args.allow_auto_truncate:
                sampling.max_new_tokens = context - n - 1
            else:
                k = sampling.max_new_tokens
                raise ValueError(
                    f"Requested token count exceeds the model's maximum context length of "
                    f"{context} tokens. You requested a total of {n + k} tokens: {n} tokens from "
                    f"the input messages and {k} tokens for the completion. Please reduce the "
                    "number of tokens in the input messages or the completion to fit within the "
                    "limit."
                )
        return sampling

    def _make_state(self, single: SingleGenerateReq) -> tuple[ReqState, TokenizedGenerateReq]:
        if single.rid in self.rid_to_state:
            raise ValueError(f"Duplicate request ID: {single.rid}")
        input_ids, namespace = self._tokenize(single)
        if not input_ids:
            raise ValueError("The input is empty after tokenization.")
        sampling = self._validate(single, input_ids)
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
        if self.engine_dead:
            raise EngineDeadError("The engine process is not running.")
        singles, is_list = obj.normalize()
        prepared = [self._make_state(s) for s in singles]  # validate all before sending any
        if singles and singles[0].parallel_sample_num > 1:
            await self._prefill_shared_prompts(prepared)
        for state, _ in prepared:
            self.rid_to_state[state.single.rid] = state
        await self.send_sock.send_pyobj([req for _, req in prepared])
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
            single = SingleGenerateReq(rid, None, ids, None, {}, False, -1, 0, None, False, "",
                                       None, False, 0, 0, 1)
            state = ReqState(single=single, sampling=sampling, prompt_tokens=len(ids), detok=None,
                             created=time.time())
            self.rid_to_state[rid] = state
            warm.append(state)
            await self.send_sock.send_pyobj(TokenizedGenerateReq(
                rid=rid, input_ids=ids, sampling=sampling, input_embeds=first.input_embeds,
                cache_namespace=first.cache_namespace))
        for state in warm:
            await self.wait(state)
            self.rid_to_state.pop(state.single.rid, None)

    async def wait(self, state: ReqState) -> None:
        while not state.finished:
            state.event.clear()
            await state.event.wait()

    def release(self, state: ReqState) -> None:
        self.rid_to_state.pop(state.single.rid, None)

    async def stream(self, state: ReqState) -> AsyncIterator[dict[str, Any]]:
        """Yields response chunks every stream_interval tokens, the last one with finish_reason."""
        interval = state.sampling.stream_interval or self.args.stream_interval
        sent_len = 0
        sent_text = ""
        while True:
            state.event.clear()
            if not state.finished and len(state.output_ids) - sent_len < interval:
                await state.event.wait()
            if state.error is not None:
                raise RequestFailed(*state.error)
            n = len(state.output_ids)
            if state.finished or n - sent_len >= interval:
                chunk = self.response(state, incremental_from=(sent_len, sent_text)
                                      if self.args.incremental_streaming_output else None)
                sent_len, sent_text = n, state.text
                yield chunk
                if state.finished:
                    return

    def response(self, state: ReqState,
                 incremental_from: tuple[int, str] | None = None) -> dict[str, Any]:
        """The /generate response object (or streaming chunk) of a request, as of now."""
        ids = state.output_ids
        text = state.text
        if incremental_from is not None:
            ids = ids[incremental_from[0]:]
            text = text[len(incremental_from[1]):]
        meta: dict[str, Any] = {
            "id": state.single.rid,
            "finish_reason": state.finish_reason,
            "prompt_tokens": state.prompt_tokens,
            "weight_version": self.args.weight_version,
            "num_retractions": state.num_retractions,
        }
        if state.single.return_logprob:
            self._add_logprobs(state, meta, incremental_from[0] if incremental_from else 0)
        meta["reasoning_tokens"] = 0
        meta["completion_tokens"] = len(state.output_ids)
        meta["cached_tokens"] = state.cached_tokens
        if state.single.return_hidden_states:
            start = incremental_from[0] if incremental_from else 0
            meta["hidden_states"] = state.hidden_states[start:]
        if state.finish_reason is not None:
            meta["e2e_latency"] = time.time() - state.created
            meta["response_sent_to_client_ts"] = time.time()
        out: dict[str, Any] = {}
        if self.tokenizer is not None:
            out["text"] = text
        out["output_ids"] = list(ids)
        out["meta_info"] = meta
        return out

    def _add_logprobs(self, state: ReqState, meta: dict[str, Any], start: int) -> None:
        single = state.single
        with_text = single.return_text_in_logprobs and self.tokenizer is not None

        def entry(lp: float | None, tok: int) -> list[Any]:
            text = self.tokenizer.decode([tok]) if with_text else None
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


class RequestFailed(Exception):
    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def require_tokenizer(sampling: SamplingParams) -> None:
    """Without a tokenizer (--skip-tokenizer-init) text stops and min_new_tokens are refused."""
    text = "(requires tokenizer to decode tokens to text for matching)."
    if sampling.stop_strings:
        raise ValueError(f"stop={sampling.stop_strings!r} is unavailable when "
                         f"skip_tokenizer_init=True {text}")
    if sampling.stop_regex_list:
        raise ValueError(f"stop_regex={sampling.stop_regex_list!r} is unavailable when "
                         f"skip_tokenizer_init=True {text}")
    if sampling.min_new_tokens > 0:
        raise ValueError(f"min_new_tokens={sampling.min_new_tokens} is unavailable when "
                         "skip_tokenizer_init=True (requires tokenizer for eos_token_id).")


def embeds_namespace(embeds: Any, hidden_size: int) -> str:
    """The radix-cache namespace of an input_embeds prompt (a hash of its content, so only
    identical embeddings share cached KV). ValueError (HTTP 400) unless ``embeds`` is a non-empty
    [tokens][hidden_size] of finite numbers."""
    if not embeds:
        raise ValueError("input_embeds cannot be empty.")
    for row in embeds:
        if len(row) != hidden_size:
            raise ValueError(f"input_embeds rows must have the model's hidden size "
                             f"({hidden_size}), got a row of {len(row)}.")
    values = np.asarray(embeds, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("input_embeds must contain only finite numbers.")
    return f"embeds:{hashlib.sha256(values.tobytes()).hexdigest()}"
