"""The engine: drives the C++ scheduler core, the model runner and the sampler, one step at a time.

Data flow of a step: ``core.schedule()`` gives a BatchPlan; ``ForwardBatch.from_plan`` turns it into
tensors; the model runner returns logits for the rows to sample (and prompt rows when prompt
logprobs are wanted); the sampler applies penalties / bans / biases and draws tokens; ``core.commit``
applies token-level stops and gives finished KV to the radix cache; text-level stops (stop strings,
regexes) are checked here. Each step returns the ``ReqOutput`` updates for the HTTP process.
Used by the engine process (``engine_process.py``); has no I/O of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from sglang import _core
from sglang.srt.constrained.base_grammar_backend import (
    GrammarMatcher,
    create_grammar_backend,
    grammar_key,
)
from sglang.srt.constrained.grammar_manager import GrammarManager
from sglang.srt.layers.pooler import PoolingConfig, pool, pooling_config
from sglang.srt.lora.adapter import LoraError
from sglang.srt.lora.manager import LoraManager, ServedAdapter
from sglang.srt.managers.finish_reason import FinishKind, FinishReason
from sglang.srt.managers.io_struct import (
    WEIGHTS_BUSY,
    EngineReady,
    LoadLoraAdapterReq,
    LoraAdapterResp,
    ReqOutput,
    RequestError,
    TokenizedGenerateReq,
    UnloadLoraAdapterReq,
    UpdateWeightsFromDiskReq,
    UpdateWeightsFromDiskResp,
)
from sglang.srt.managers.stop_checker import StopChecker, StopCheckError
from sglang.srt.models.sequence_classification import label_names
from sglang.srt.multimodal.engine_steps import ImageSteps, StepImages
from sglang.srt.multimodal.inputs import ImageInputs
from sglang.srt.sampling.custom_logit_processor import ReqView
from sglang.srt.sampling.sampler import BatchSampler, RowSampling
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)

CPU_DEFAULT_MAX_TOTAL_TOKENS = 65536
CPU_KV_MEMORY_FRACTION = 0.25
GRAMMAR_COMPILE_TIMEOUT_S = float(os.environ.get("SGLANG_GRAMMAR_COMPILE_TIMEOUT", "60"))
MAX_FAILED_STEPS = 3  # consecutive failed steps before the engine gives up
QUEUE_FULL = "The request queue is full."
MAX_ERROR_CHARS = 500  # an error message never echoes a long request field
DECODER_POOLING = PoolingConfig("last", normalize=True)


@dataclasses.dataclass
class EngineReq:
    req: TokenizedGenerateReq
    handle: int
    sampling: RowSampling
    stop: StopChecker
    output_ids: list[int] = dataclasses.field(default_factory=list)
    cached_tokens: int = 0
    num_retractions: int = 0
    input_logprobs_done: bool = False
    # Prompt logprob pieces gathered across prefill chunks.
    input_token_logprobs: list[tuple[float | None, int]] = dataclasses.field(default_factory=list)
    input_top_logprobs: list[Any] = dataclasses.field(default_factory=list)
    input_ids_logprobs: list[Any] = dataclasses.field(default_factory=list)
    # input_embeds of the prompt ([prompt_len, hidden], model dtype) replacing the id lookup.
    input_embeds: torch.Tensor | None = None
    # A vision-language prompt's images, and their embeddings once computed (by image index;
    # dropped when the prompt's prefill ends, computed again after a retraction if needed).
    images: ImageInputs | None = None
    image_embeds: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    # return_hidden_states: the prompt's vectors gathered across prefill chunks ("full" mode).
    prefill_hidden: list[Any] = dataclasses.field(default_factory=list)
    hidden_prefill_done: bool = False
    grammar: GrammarMatcher | None = None  # constrained decoding state
    lora: ServedAdapter | None = None  # its LoRA adapter (kept after an unload until it ends)

    @property
    def wants_input_logprobs(self) -> bool:
        return self.req.return_logprob and self.req.logprob_start_len >= 0

    @property
    def wants_prompt_rows(self) -> bool:
        """Whether this prefill step must return every prompt row (logprobs or hidden states)."""
        logprobs = self.wants_input_logprobs and not self.input_logprobs_done
        hidden = self.req.return_hidden_states == "full" and not self.hidden_prefill_done
        return logprobs or hidden


class EngineCore:
    def __init__(self, server_args: ServerArgs, dist_init_method: str | None = None) -> None:
        """``dist_init_method``: with ``--tp-size > 1``, where this rank 0 meets its followers
        (``tp_worker.py``); each forward pass is broadcast to them first."""
        from sglang.srt.managers.tp_worker import TP_TIMEOUT_S, TPLeader
        from sglang.srt.model_executor.model_runner import ModelRunner

        self.args = server_args
        torch.manual_seed(server_args.random_seed)
        self.runner = ModelRunner.from_server_args(server_args, dist_init_method=dist_init_method,
                                                   dist_timeout_s=TP_TIMEOUT_S)
        self.tp: TPLeader | None = TPLeader(self.runner.tp_group) \
            if self.runner.tp_size > 1 else None
        self.model_config = self.runner.model_config
        # --is-embedding with a decoder (gte-Qwen2, Qwen3-Embedding style): every request is a
        # prefill whose last prompt position's final hidden state, pooled, is its embedding.
        # A reward / classification model's "embedding" is its score head's logits there.
        self.pooling: PoolingConfig | None = None
        self.classifier = bool(getattr(self.runner.model, "is_classifier", False))
        if getattr(self.runner.model, "is_base_model", False) and not server_args.is_embedding:
            raise ValueError(f"{self.model_config.architecture} is a base model without an LM "
                             "head: serve it as an embedding model with --is-embedding")
        if self.classifier and not server_args.is_embedding:
            raise ValueError(f"{self.model_config.architecture} is a reward/classification "
                             "model: launch the server with --is-embedding (/classify)")
        if server_args.is_embedding and self.classifier:
            self.pooling = PoolingConfig("last", normalize=False)
        elif server_args.is_embedding:
            from sglang.srt.model_loader.resolve import resolve_model_path

            folder = resolve_model_path(server_args.model_path).folder
            self.pooling = pooling_config(folder, DECODER_POOLING)
            if self.pooling.mode != "last":
                raise ValueError(f"decoder embedding models pool the last token; this "
                                 f"checkpoint asks for {self.pooling.mode} pooling")
        self.device = torch.device(self.runner.device)
        self.tokenizer = None
        if not server_args.skip_tokenizer_init:
            from sglang.srt.hf_transformers_utils import get_tokenizer

            self.tokenizer = get_tokenizer(server_args.tokenizer_path)
        # --enable-lora: the adapters, their slot pool and the projections' hooks.
        self.lora: LoraManager | None = None
        if server_args.enable_lora:  # (under TP: this rank's shard; followers hold theirs)
            self.lora = LoraManager.from_server_args(self.runner, server_args)
        self.core = _core.Scheduler(self._scheduler_config())
        if self.tp is not None:
            self.tp.share_num_slots(self.core.num_slots)
        self.runner.init_kv_pool(self.core.num_slots)
        with warnings.catch_warnings():  # the table is read-only on purpose: the core writes it
            warnings.simplefilter("ignore", UserWarning)
            self.req_to_token = torch.from_numpy(self.core.req_to_token())
        self.sampler = BatchSampler(self.device)
        # Vision-language models: the image embeddings and M-RoPE positions of each step.
        self.images = ImageSteps(self.runner.model) if hasattr(
            self.runner.model, "encode_images") else None
        self.reqs: dict[int, EngineReq] = {}
        self.rid_to_handle: dict[str, int] = {}
        self.seed_counter = 0
        self.grammars: GrammarManager | None = None  # created by the first grammar request
        # Overlap (--disable-overlap-schedule turns it off): a step ends before its tokens
        # reach the host (core.commit_pending); the next step is planned and launched with
        # placeholders that the device replaces by those tokens, and the tokens are handed to
        # the core (core.resolve) and processed into outputs while that forward runs (before
        # the next step's grammar masks and logit processors, which read them). Steps whose
        # next inputs need the tokens on the host before the forward (penalties, TP, images)
        # are committed at once; their outputs are still processed during the next forward
        # (_deferred) unless the next step's mask or processor needs them.
        self.overlap = server_args.overlap_schedule()
        self._pending: tuple | None = None  # the last step ended by commit_pending, unresolved
        self._deferred: tuple | None = None  # the last step's committed results, unprocessed
        self.overlapped_steps = 0  # steps whose outputs were processed during the next forward
        self.scheduled_ahead_steps = 0  # steps planned before the last one's tokens were known
        self.forward_ct = 0
        self.failed_steps = 0  # consecutive steps whose forward or sampling raised
        self.last_gen_throughput = 0.0
        self._tput_window: tuple[float, int] = (time.perf_counter(), 0)

    # ---- set-up ----------------------------------------------------------------------------------
    def _max_total_tokens(self) -> int:
        """This rank's KV tokens; under TP the minimum over the ranks."""
        from sglang.srt.managers.tp_worker import agree_max_total_tokens

        tokens = local_max_total_tokens(self.args, self.runner)
        return tokens if self.tp is None else agree_max_total_tokens(self.tp.group, tokens)

    def _scheduler_config(self) -> _core.SchedulerConfig:
        args, mc = self.args, self.model_config
        cfg = _core.SchedulerConfig()
        cfg.max_total_tokens = self._max_total_tokens()
        cfg.page_size = args.page_size
        cfg.max_running_requests = args.max_running_requests
        cfg.max_prefill_tokens = args.max_prefill_tokens
        cfg.chunked_prefill_size = args.chunked_prefill_size
        cfg.context_length = mc.context_length
        cfg.vocab_size = mc.vocab_size
        cfg.schedule_policy = args.schedule_policy
        cfg.disable_radix_cache = args.disable_radix_cache
        cfg.eos_token_ids = list(mc.eos_token_ids)
        cfg.max_loras_per_batch = args.max_loras_per_batch if args.enable_lora else 0
        return cfg

    def ready_info(self) -> EngineReady:
        mc = self.model_config
        stats = self.core.stats()
        weight_bytes = sum(p.numel() * p.element_size() for p in self.runner.model.parameters())
        total = stats.num_free_tokens + stats.num_evictable_tokens + stats.num_used_tokens
        kv_bytes = self.runner.kv_bytes_per_token() * total
        return EngineReady(
            max_total_num_tokens=int(total),
            max_req_input_len=int(self.core.max_sequence_len - 1),
            max_sequence_len=int(self.core.max_sequence_len),
            context_length=int(mc.context_length),
            vocab_size=int(mc.vocab_size),
            hidden_size=int(mc.hidden_size),
            eos_token_ids=list(mc.eos_token_ids),
            max_running_requests=int(self.args.max_running_requests),
            architectures=[mc.architecture],
            model_type=str(getattr(mc, "model_type", "")),
            device=str(self.device),
            dtype=str(self.runner.dtype).replace("torch.", ""),
            generation_config=dict(self.runner.generation_config),
            is_embedding=self.pooling is not None,
            matryoshka=self.pooling is not None and not self.classifier
            and _is_matryoshka(self.model_config.hf_config),
            id2label=label_names(self.model_config.hf_config, self.runner.model),
            image_understanding=hasattr(self.runner.model, "encode_images"),
            lora_enabled=self.lora is not None,
            lora_adapters=self.lora.loaded() if self.lora is not None else {},
            memory_usage={"weight": weight_bytes / 2**30, "kvcache": kv_bytes / 2**30,
                          "token_capacity": int(total), "graph": 0.0},
        )

    # ---- requests --------------------------------------------------------------------------------
    def add_request(self, req: TokenizedGenerateReq) -> RequestError | None:
        """Queues a request; returns the error of a request that is refused: 400 when the core
        refuses it, 503 when ``--max-queued-requests`` requests already wait.

        A request with a grammar first waits for it to compile (``self.grammars``); ``step``
        admits it to the core once the compiled grammar is there."""
        if req.rid in self.rid_to_handle or (self.grammars and self.grammars.has_rid(req.rid)):
            return RequestError(req.rid, f"Duplicate request ID: {req.rid}")
        if self.pooling is not None:
            # One greedy step gives the prompt's last hidden state; its token is not returned.
            req = dataclasses.replace(
                req, sampling=SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True),
                return_hidden_states="last", return_logprob=False)
        limit = self.args.max_queued_requests
        if limit is not None and self.num_queued() >= limit:
            return RequestError(req.rid, QUEUE_FULL, 503)
        key = grammar_key(req.sampling)
        if key is None:
            error = self._admit(req, None)
            return None if error is None else RequestError(req.rid, error)
        if self.tokenizer is None or self.args.grammar_backend == "none":
            return RequestError(req.rid,
                                "Constrained decoding needs a tokenizer and a grammar backend.")
        if self.grammars is None:
            self.grammars = GrammarManager(self._create_grammar_backend, GRAMMAR_COMPILE_TIMEOUT_S)
        self.grammars.submit(req, key)
        return None

    def _create_grammar_backend(self) -> Any:
        mc = self.model_config
        return create_grammar_backend(self.args.grammar_backend, self.tokenizer, mc.vocab_size,
                                      list(mc.eos_token_ids))

    def _poll_grammars(self) -> list[ReqOutput]:
        """Admits the waiting requests whose grammar compiled; ends those whose grammar failed
        or timed out (an abort with status 400: the HTTP side answers with the message)."""
        if self.grammars is None or not self.grammars.waiting:
            return []
        ready, failed = self.grammars.poll(wait=self.core.idle())
        for req, matcher in ready:
            error = self._admit(req, matcher)
            if error is not None:
                failed.append((req, error))
        return [self._refused(req, message) for req, message in failed]

    @staticmethod
    def _refused(req: TokenizedGenerateReq, message: str, status: int | None = 400) -> ReqOutput:
        """The final output of a request ended before it reached the core: refused (HTTP 400)
        or, with ``status`` None, a plain abort."""
        finish = FinishReason.abort(message) if status is None else \
            FinishReason.error(message, status)
        return ReqOutput(rid=req.rid, new_token_ids=[], finish_reason=finish,
                         prompt_tokens=len(req.input_ids), cached_tokens=0, num_retractions=0)

    def _admit(self, req: TokenizedGenerateReq, grammar: GrammarMatcher | None) -> str | None:
        sp = req.sampling
        penalty_scope = 0
        if sp.repetition_penalty != 1.0:
            penalty_scope = 2
        elif sp.frequency_penalty != 0.0 or sp.presence_penalty != 0.0:
            penalty_scope = 1
        if req.input_embeds is not None and penalty_scope == 2:
            penalty_scope = 1  # the prompt has no token ids to penalise, only placeholders
        max_cached = -1
        if req.return_logprob and req.logprob_start_len >= 0:
            max_cached = max(req.logprob_start_len - 1, 0)
        if req.return_hidden_states == "full":
            max_cached = 0  # every prompt position's hidden state is computed
        lora = None
        namespace = req.cache_namespace
        if req.lora_name is not None:
            if self.lora is None:
                return "lora_path: LoRA adapters are not enabled on this server."
            try:
                lora = self.lora.get(req.lora_name)
            except LoraError as exc:
                return f"lora_path: {exc}"
            namespace = lora.cache_namespace(namespace)  # adapters never share KV
        try:
            handle = self.core.add_request(
                np.asarray(req.input_ids, dtype=np.int32),
                max_new_tokens=-1 if sp.max_new_tokens is None else sp.max_new_tokens,
                min_new_tokens=sp.min_new_tokens,
                ignore_eos=sp.ignore_eos,
                stop_token_ids=list(sp.stop_token_ids or []),
                penalty_scope=penalty_scope,
                cache_namespace=namespace,
                max_cached_prefix=max_cached,
                lora_id=-1 if lora is None else lora.id,
            )
        except _core.CoreError as exc:
            return str(exc)
        seed = sp.sampling_seed
        if seed is None:
            self.seed_counter += 1
            seed = (self.args.random_seed * 1_000_003 + self.seed_counter) & 0xFFFFFFFFFFFFFFFF
        stop = StopChecker(self.tokenizer, sp.stop_strings, sp.stop_regex_list)
        output_ids: list[int] = []
        row = RowSampling.build(sp, seed, req.return_logprob, req.top_logprobs_num,
                                req.token_ids_logprob, req.custom_logit_processor,
                                ReqView(req.rid, req.input_ids, output_ids))
        ereq = EngineReq(req=req, handle=handle, sampling=row, stop=stop, output_ids=output_ids,
                         grammar=grammar, lora=lora)
        if req.input_embeds is not None:
            ereq.input_embeds = torch.as_tensor(req.input_embeds, dtype=self.runner.dtype,
                                                device=self.device)
        ereq.images = req.images
        self.reqs[handle] = ereq
        self.rid_to_handle[req.rid] = handle
        return None

    def abort(self, rid: str, abort_all: bool = False, message: str = "Aborted") -> list[ReqOutput]:
        """Aborts one request (or all); returns the final outputs of those aborted at once."""
        handles = list(self.reqs) if abort_all else [self.rid_to_handle.get(rid, -1)]
        outs = []
        for req in self.grammars.abort(rid, abort_all) if self.grammars else []:
            outs.append(self._refused(req, message, status=None))
        for h in handles:
            ereq = self.reqs.get(h)
            if ereq is None:
                continue
            result = self.core.abort(h)
            if result == _core.AbortResult.DONE:
                outs.append(self._final(ereq, FinishReason.abort(message), []))
        return outs

    def _final(self, ereq: EngineReq, finish: FinishReason, new_ids: list[int]) -> ReqOutput:
        self.reqs.pop(ereq.handle, None)
        self.rid_to_handle.pop(ereq.req.rid, None)
        return self._output(ereq, new_ids, finish)

    @staticmethod
    def _output(ereq: EngineReq, new_ids: list[int], finish: FinishReason | None) -> ReqOutput:
        return ReqOutput(
            rid=ereq.req.rid,
            new_token_ids=new_ids,
            finish_reason=finish,
            prompt_tokens=len(ereq.req.input_ids),
            cached_tokens=ereq.cached_tokens,
            num_retractions=ereq.num_retractions,
        )

    def num_queued(self) -> int:
        """Requests waiting: in the core's queue or for their grammar."""
        return self.core.stats().num_waiting + (len(self.grammars.waiting) if self.grammars
                                                else 0)

    def flush_cache(self) -> bool:
        return self.core.flush_cache()

    def update_weights_from_disk(self, req: UpdateWeightsFromDiskReq) -> UpdateWeightsFromDiskResp:
        """Swap the model's weights (the HTTP side drained or aborted every request first); the
        radix cache, computed with the old weights, is flushed after a success."""
        if not self.idle():
            return UpdateWeightsFromDiskResp(False, WEIGHTS_BUSY)
        if self.tp is not None:  # every rank loads its shard of the new weights
            from sglang.srt.managers.tp_worker import StepMessage

            self.tp.send(StepMessage("update_weights", model_path=req.model_path,
                                     load_format=req.load_format))
        ok, message = self.runner.update_weights_from_disk(req.model_path, req.load_format)
        if ok and req.flush_cache:
            self.flush_cache()
        return UpdateWeightsFromDiskResp(ok, message)

    def update_lora(self, req: LoadLoraAdapterReq | UnloadLoraAdapterReq) -> LoraAdapterResp:
        """/load_lora_adapter and /unload_lora_adapter (between steps; requests already
        accepted keep the adapter they run with)."""
        if self.lora is None:
            return LoraAdapterResp(False, "LoRA adapters are not enabled on this server.", {})
        try:
            if isinstance(req, LoadLoraAdapterReq):
                self._load_lora(req.lora_name, req.lora_path)
            else:
                self.lora.unload(req.lora_name)
                self._send_lora("unload_lora", lora_name=req.lora_name)
                self._drop_unused_loras()
        except LoraError as exc:
            return LoraAdapterResp(False, str(exc)[:MAX_ERROR_CHARS], self.lora.loaded())
        except Exception as exc:  # noqa: BLE001 (an unreadable path or file: never the engine)
            message = f"Cannot load the LoRA adapter: {type(exc).__name__}: {exc}"
            return LoraAdapterResp(False, message[:MAX_ERROR_CHARS], self.lora.loaded())
        return LoraAdapterResp(True, None, self.lora.loaded())

    def _load_lora(self, name: str, path: str) -> None:
        """Loads an adapter here (the checks), then on the TP followers with the same load id;
        when a follower fails, every rank forgets it (LoraError)."""
        assert self.lora is not None
        served = self.lora.load(name, path)
        if self.tp is None:
            return
        from sglang.srt.managers.tp_worker import agree

        self._send_lora("load_lora", lora_name=name, lora_path=path, lora_ids=(served.id,))
        if not agree(self.tp.group, True):
            self.lora.discard(name)
            raise LoraError(f"LoRA adapter '{name}' could not be loaded on every TP rank (see "
                            "the followers' logs); no rank serves it.")

    def _send_lora(self, kind: str, **fields: Any) -> None:
        if self.tp is not None:
            from sglang.srt.managers.tp_worker import StepMessage

            self.tp.send(StepMessage(kind, **fields))

    def _drop_unused_loras(self) -> None:
        """Forgets, on every rank, the unloaded adapters no request holds any more."""
        if self.lora is None or not self.lora.retired:
            return
        live = {e.lora.id for e in self.reqs.values() if e.lora is not None}
        unused = tuple(i for i in self.lora.retired if i not in live)
        if unused:
            self.lora.drop_retired(unused)
            self._send_lora("drop_lora", lora_ids=unused)

    def heartbeat(self) -> None:
        """Called every loop of the engine process: while no step has been broadcast for
        ``KEEPALIVE_S``, keeps the TP followers' wait under the group's timeout; forgets the
        unloaded LoRA adapters that the last requests using them have released."""
        self._drop_unused_loras()
        if self.tp is not None:
            self.tp.keepalive()

    def close(self) -> None:
        """Ends the TP followers (the engine process calls it on shutdown)."""
        if self.tp is not None:
            self.tp.stop()
            self.tp = None

    def idle(self) -> bool:
        return self.core.idle() and not (self.grammars and self.grammars.waiting) and \
            self._deferred is None and self._pending is None

    def internal_state(self) -> dict[str, Any]:
        s = self.core.stats()
        return {
            "num_running_reqs": s.num_running,
            "num_waiting_reqs": s.num_waiting,
            "num_used_tokens": s.num_used_tokens,
            "num_free_tokens": s.num_free_tokens,
            "num_evictable_tokens": s.num_evictable_tokens,
            "cache_hit_tokens": s.cache_hit_tokens,
            "cache_miss_tokens": s.cache_miss_tokens,
            "num_retractions": s.num_retractions,
            "last_gen_throughput": self.last_gen_throughput,
            "forward_ct": self.forward_ct,
            "idle": self.idle(),
            "num_grammar_waiting": len(self.grammars.waiting) if self.grammars else 0,
            "grammar_mask_us_per_token": self.grammars.mask_us_per_token if self.grammars else 0.0,
            "integrity_ok": self._integrity_ok(),
            # adapters copied into the LoRA slots so far (more than loaded: evictions happened)
            "lora_slot_loads": self.lora.pool.loads if self.lora is not None else 0,
            "overlap_schedule": self.overlap,
            "overlapped_steps": self.overlapped_steps,
            "scheduled_ahead_steps": self.scheduled_ahead_steps,
        }

    def _integrity_ok(self) -> bool:
        try:
            self.core.check_integrity()
            if self.lora is not None:
                self.lora.check_integrity()
        except (_core.CoreError, AssertionError) as exc:
            logger.error("integrity check failed: %s", exc)
            return False
        return True

    # ---- one step --------------------------------------------------------------------------------
    def step(self) -> list[ReqOutput] | None:
        """Runs one scheduled batch; None when there was nothing to run or report.

        A step whose forward pass or sampling raises ends the requests of its batch with a 500
        (the core drops the step's KV) and the engine goes on; MAX_FAILED_STEPS such steps in a
        row re-raise (the device is likely broken: the process exits and is restarted)."""
        refused = self._poll_grammars()
        plan = self.core.schedule()
        if plan.mode == _core.ForwardMode.IDLE:
            return refused + self._take_deferred() + self._resolve_pending() or None
        early: list[ReqOutput] = []  # the previous step's outputs (overlap)

        def previous_step() -> None:
            early.extend(self._take_deferred())
            early.extend(self._resolve_pending())

        try:
            step = self._forward_and_sample(plan, previous_step)
        except Exception as exc:
            previous_step()  # (when the forward itself failed)
            self.failed_steps += 1
            if self.failed_steps >= MAX_FAILED_STEPS or self.tp is not None:
                raise  # under TP the ranks may no longer be in lockstep: the group ends
            logger.exception("a step failed; its requests end with an error")
            outs = self._cancel_plan(f"{type(exc).__name__}: {exc}")
        else:
            self.failed_steps = 0
            outs = self._commit(*step)
        return refused + early + outs

    def _take_deferred(self) -> list[ReqOutput]:
        """Processes the last step's committed results if they were left for overlap."""
        deferred, self._deferred = self._deferred, None
        return self._collect(*deferred) if deferred is not None else []

    def _resolve_pending(self) -> list[ReqOutput]:
        """Hands the tokens of the step ended by commit_pending to the core (waiting for their
        copy to the host) and processes its outputs."""
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        sample_reqs, sampled, hidden_out, failed = pending
        rids, tokens, reasons, _ = self.core.resolve(sampled.next_ids)
        return self._collect(sample_reqs, sampled, rids, tokens, reasons, hidden_out, failed)

    def _may_schedule_ahead(self, plan: Any) -> bool:
        """Whether the next step may be planned before this one's tokens reach the host: only
        when nothing of the next step's inputs needs them there before its forward. Penalty
        counts are kept by the core on the host; TP followers and image steps take their
        inputs from the host. (Grammars and custom logit processors are fine: the tokens are
        resolved, accepted and appended while the next forward runs, before its masks are
        filled and its processors called.)"""
        return self.overlap and self.pooling is None and self.tp is None \
            and self.images is None and not len(plan.penalty_indptr)

    def _may_defer(self, sample_reqs: list[EngineReq]) -> bool:
        """Whether a step's outputs may wait for the next step's forward. Not when the next
        step's inputs depend on them: a grammar's mask needs the token accepted, a custom logit
        processor reads the output ids. A finish decided from them (stop strings) comes one
        step late: the core aborts the request's next token, which is never reported."""
        return self.overlap and self.pooling is None and not any(
            e.grammar is not None or e.req.custom_logit_processor for e in sample_reqs)

    def _cancel_plan(self, reason: str) -> list[ReqOutput]:
        finish = FinishReason.error(f"Internal error while running the request: {reason}", 500)
        return [self._final(self.reqs[h], finish, [])
                for h in self.core.cancel_plan().tolist() if h in self.reqs]

    def _forward_and_sample(self, plan: Any, while_forward_runs: Any = None) -> tuple:
        """The forward pass and sampling of a plan (nothing committed yet).
        ``while_forward_runs``: called once the forward is launched, before the sampling waits
        for it (on a GPU the host works while the device computes)."""
        from sglang.srt.model_executor.forward_batch import ForwardBatch

        req_ids = plan.req_ids
        ereqs = [self.reqs[int(h)] for h in req_ids]
        if plan.mode == _core.ForwardMode.EXTEND:
            for e in ereqs:  # the prefix-cache hit of a new request is known once admitted
                if not e.output_ids and e.num_retractions == 0:
                    e.cached_tokens = int(self.core.request_info(e.handle)["cached_tokens"])
        logits_rows, prompt_slices = self._logits_rows(plan, ereqs)
        capture_hidden = any(e.req.return_hidden_states for e in ereqs)
        images = self.images.step(plan, ereqs) if self.images is not None else None
        batch = ForwardBatch.from_plan(plan, self.req_to_token, self.device,
                                       logits_rows=logits_rows, capture_hidden=capture_hidden,
                                       positions=images.positions if images else None)
        if images is not None and images.mrope_positions is not None:
            batch.mrope_positions = torch.from_numpy(images.mrope_positions).to(self.device)
        if self._pending is not None:
            batch.input_ids = with_pending_tokens(batch.input_ids, plan.input_ids,
                                                  self._pending[1].device_ids)
        embeds_step = plan.mode == _core.ForwardMode.EXTEND and (
            images is not None and images.rows or any(e.input_embeds is not None for e in ereqs))
        lora_step = None
        if self.lora is not None:  # pinned before the TP followers are told which slots
            rows = plan.extend_lens if plan.mode == _core.ForwardMode.EXTEND else \
                np.ones(len(ereqs), dtype=np.int32)
            batch.lora = lora_step = self.lora.begin(rows, [e.lora for e in ereqs])
        try:
            if self.tp is not None:  # the followers run this forward too
                from sglang.srt.managers.tp_worker import StepMessage

                self.tp.broadcast_step(StepMessage.from_plan(
                    plan, self.req_to_token, logits_rows, capture_hidden,
                    images.positions if images else None,
                    self._tp_embed_rows(plan, ereqs, images) if embeds_step else None,
                    lora_step.info if lora_step is not None else None,
                    images.mrope_positions if images else None))
            if embeds_step:
                batch.input_embeds = self._extend_embeds(plan, ereqs, batch.input_ids, images)
            sample_reqs = [ereqs[i] for i in plan.sample_indices]
            masks = None
            # The bitmask rows are filled while the forward runs; after the pending step's
            # tokens are accepted when there is one.
            masks_now = self.grammars is not None and self._pending is None
            if masks_now:
                masks = self.grammars.start_masks([e.grammar for e in sample_reqs])
            result = self.runner.forward(batch)
        finally:
            if self.lora is not None:
                self.lora.end()
        if while_forward_runs is not None:
            while_forward_runs()
        if self.grammars is not None and not masks_now:  # (a request the pending step ended
            masks = self.grammars.start_masks(  # has no mask: its row is dropped anyway)
                [e.grammar if e.handle in self.reqs else None for e in sample_reqs])
        logits = result.logits
        sample_pos = prompt_slices.pop("__sample__")
        sample_index = None if sample_pos is None else torch.as_tensor(
            sample_pos, dtype=torch.long, device=logits.device)
        sample_logits = logits if sample_index is None else logits.index_select(0, sample_index)
        if prompt_slices:
            self._prompt_rows(ereqs, logits, result.hidden_states, prompt_slices)
        hidden_out: dict[int, list[Any]] = {}
        if capture_hidden and result.hidden_states is not None:
            hidden = result.hidden_states
            sample_hidden = hidden if sample_index is None else hidden.index_select(0, sample_index)
            hidden_out = self._sampled_hidden(sample_reqs, sample_hidden)
        offsets = plan.output_lens[plan.sample_indices]
        penalty = None
        if len(plan.penalty_indptr):
            penalty = (plan.penalty_indptr, plan.penalty_token_ids, plan.penalty_counts)
        ban = (plan.ban_indptr, plan.ban_token_ids) if len(plan.ban_indptr) else None
        bitmask = self.grammars.finish_masks(masks, self.device) if masks else None
        sampled = self.sampler.sample(sample_logits.float().contiguous(),
                                      [e.sampling for e in sample_reqs], offsets, penalty, ban,
                                      bitmask)
        return plan, sample_reqs, sampled, hidden_out

    def _commit(self, plan: Any, sample_reqs: list[EngineReq], sampled: Any,
                hidden_out: dict[int, list[Any]]) -> list[ReqOutput]:
        self.forward_ct += 1
        for h in plan.retracted.tolist():
            if h in self.reqs:  # (one ended by the overlapped outputs is gone)
                self.reqs[h].num_retractions += 1
        failed = {sample_reqs[k].handle: err.message
                  for err in sampled.processor_errors for k in err.rows}
        if self._may_schedule_ahead(plan):
            settled = self.core.commit_pending()  # (aborts)
            self._pending = (sample_reqs, sampled, hidden_out, failed)
            self.scheduled_ahead_steps += 1
            self.overlapped_steps += 1
            return self._collect(sample_reqs, sampled, *settled[:3], hidden_out, failed)
        rids, tokens, reasons, _ = self.core.commit(sampled.next_ids)
        results = (sample_reqs, sampled, rids, tokens, reasons, hidden_out, failed)
        if self._may_defer(sample_reqs):
            self._deferred = results
            self.overlapped_steps += 1
            return []
        return self._collect(*results)

    def _extend_embeds(self, plan: Any, ereqs: list[EngineReq], input_ids: torch.Tensor,
                       images: StepImages | None = None) -> torch.Tensor:
        """Token embeddings of an extend step, with the prompt rows of input_embeds requests
        taken from their embeddings (positions past the prompt, e.g. after a retraction, are
        generated tokens and use the table) and image rows from the vision tower."""
        with torch.inference_mode():
            embeds = self.runner.embed_tokens(input_ids)
            if images is not None:
                images.write(embeds)
            for lo, rows in self._embed_overrides(plan, ereqs, cpu=False):
                embeds[lo:lo + rows.shape[0]] = rows
        return embeds

    def _tp_embed_rows(self, plan: Any, ereqs: list[EngineReq],
                       images: StepImages | None) -> list[tuple[int, torch.Tensor]]:
        """The rows of an extend step that the TP followers take from rank 0 instead of their
        embedding table: image rows (from rank 0's vision tower), then input_embeds rows, in
        the order ``_extend_embeds`` writes them."""
        rows = [(lo, r.cpu()) for lo, r in images.rows] if images is not None else []
        return rows + self._embed_overrides(plan, ereqs)

    @staticmethod
    def _embed_overrides(plan: Any, ereqs: list[EngineReq],
                         cpu: bool = True) -> list[tuple[int, torch.Tensor]]:
        """(first row, rows) of an extend step taken from requests' input_embeds."""
        out = []
        for i, e in enumerate(ereqs):
            if e.input_embeds is None:
                continue
            first = int(plan.prefix_lens[i])
            count = min(int(plan.extend_lens[i]), e.input_embeds.shape[0] - first)
            if count > 0:
                rows = e.input_embeds[first:first + count]
                out.append((int(plan.extend_start[i]), rows.cpu() if cpu else rows))
        return out

    def _sampled_hidden(self, sample_reqs: list[EngineReq],
                        hidden: torch.Tensor) -> dict[int, list[Any]]:
        """hidden_states entries of this step per request: the prompt block once its prefill
        ends (every prompt vector, or only the last in "last" mode), then one vector per
        decoded token (the hidden state of the token fed to this step)."""
        out: dict[int, list[Any]] = {}
        for k, e in enumerate(sample_reqs):
            mode = e.req.return_hidden_states
            if not mode:
                continue
            vector = hidden[k].float().tolist()
            if e.hidden_prefill_done:
                out[e.handle] = [vector]
                continue
            block = e.prefill_hidden if mode == "full" else [vector]
            e.prefill_hidden = []
            e.hidden_prefill_done = True
            out[e.handle] = [block]
        return out

    def _logits_rows(self, plan: Any, ereqs: list[EngineReq]) -> tuple[np.ndarray | None, dict]:
        """Rows whose logits the runner returns: the sampled rows, plus the prompt rows of
        requests that want prompt logprobs (in a prefill step)."""
        slices: dict[Any, Any] = {"__sample__": None}
        if plan.mode != _core.ForwardMode.EXTEND or not any(e.wants_prompt_rows for e in ereqs):
            return None, slices
        rows: list[int] = []
        starts = plan.extend_start
        for i, e in enumerate(ereqs):
            if not e.wants_prompt_rows:
                continue
            first_pos = int(plan.prefix_lens[i])
            lo = int(starts[i])
            n = int(plan.extend_lens[i])
            begin = len(rows)
            rows.extend(range(lo, lo + n))
            slices[i] = (begin, first_pos, n)
        sample_pos = []
        for row in plan.sample_rows.tolist():
            sample_pos.append(len(rows))
            rows.append(row)
        slices["__sample__"] = sample_pos
        return np.asarray(rows, dtype=np.int32), slices

    def _prompt_rows(self, ereqs: list[EngineReq], logits: torch.Tensor,
                     hidden: torch.Tensor | None, slices: dict) -> None:
        """Prompt logprobs and prompt hidden states of the prompt rows of this prefill step."""
        for i, (begin, first_pos, n) in slices.items():
            e = ereqs[i]
            if e.req.return_hidden_states == "full" and not e.hidden_prefill_done:
                assert hidden is not None
                prompt_rows = min(n, len(e.req.input_ids) - first_pos)
                e.prefill_hidden.extend(hidden[begin:begin + prompt_rows].float().tolist())
            if e.wants_input_logprobs and not e.input_logprobs_done:
                self._input_logprobs(e, logits, begin, first_pos, n)

    @staticmethod
    def _input_logprobs(e: EngineReq, logits: torch.Tensor, begin: int, first_pos: int,
                        n: int) -> None:
        prompt = e.req.input_ids
        start = max(e.req.logprob_start_len, 0)
        lp = torch.log_softmax(logits[begin:begin + n].float(), dim=-1)
        if first_pos == 0 and start == 0:
            e.input_token_logprobs.append((None, prompt[0]))
            if e.req.top_logprobs_num > 0:
                e.input_top_logprobs.append(None)
            if e.req.token_ids_logprob:
                e.input_ids_logprobs.append(None)
        # Row k (position first_pos + k) predicts the token at first_pos + k + 1.
        for k in range(n):
            target_pos = first_pos + k + 1
            if target_pos >= len(prompt) or target_pos < start:
                continue
            row = lp[k]
            e.input_token_logprobs.append((float(row[prompt[target_pos]]), prompt[target_pos]))
            if e.req.top_logprobs_num > 0:
                vals, ids = torch.topk(row, e.req.top_logprobs_num)
                e.input_top_logprobs.append(list(zip(vals.tolist(), ids.tolist())))
            if e.req.token_ids_logprob:
                e.input_ids_logprobs.append([(float(row[t]), t) for t in e.req.token_ids_logprob])
        if first_pos + n >= len(prompt):
            e.input_logprobs_done = True

    def _collect(self, sample_reqs: list[EngineReq], sampled: Any, rids: np.ndarray,
                 tokens: np.ndarray, reasons: np.ndarray, hidden_out: dict[int, list[Any]],
                 failed: dict[int, str]) -> list[ReqOutput]:
        row_of = {e.handle: k for k, e in enumerate(sample_reqs)}
        outs: list[ReqOutput] = []
        n_tokens = 0
        for h, tok, reason in zip(rids.tolist(), tokens.tolist(), reasons.tolist()):
            e = self.reqs.get(h)
            if e is None:
                continue
            new_ids = [tok] if tok >= 0 else []
            e.output_ids.extend(new_ids)
            n_tokens += len(new_ids)
            try:
                finish = self._decide_finish(e, tok, reason, failed.get(h), bool(new_ids))
            except StopCheckError as exc:  # the request's own stop regex is at fault
                finish = self._end_failed(e, str(exc), 400)
            except Exception as exc:  # a bug met by this request alone: it ends, the rest goes on
                logger.exception("request %s failed after its step", e.req.rid)
                finish = self._end_failed(e, f"Internal error while running the request: "
                                             f"{type(exc).__name__}: {exc}", 500)
            out = self._output(e, new_ids, finish)
            k = row_of.get(h)
            if k is not None and new_ids and e.req.return_logprob:
                out.output_token_logprobs = [(sampled.token_logprobs[k], tok)]
                if e.req.top_logprobs_num > 0:
                    out.output_top_logprobs = [sampled.top_logprobs[k]]
                if e.req.token_ids_logprob:
                    out.output_token_ids_logprobs = [sampled.ids_logprobs[k]]
            if self.pooling is not None:
                out = self._embedding_output(e, out, hidden_out.get(h))
            elif h in hidden_out and new_ids:
                out.hidden_states = hidden_out[h]
            # Prompt logprobs go out with the first token, or at the end of a prefill-only
            # request (max_new_tokens 0: the frontend's select scores choices that way).
            if e.input_token_logprobs and e.input_logprobs_done and (new_ids or finish):
                out.input_token_logprobs = e.input_token_logprobs
                out.input_top_logprobs = e.input_top_logprobs or None
                out.input_token_ids_logprobs = e.input_ids_logprobs or None
                e.input_token_logprobs = []
            if finish is not None:
                self.reqs.pop(h, None)
                self.rid_to_handle.pop(e.req.rid, None)
            outs.append(out)
        self._update_throughput(n_tokens)
        return outs

    def _embedding_output(self, e: EngineReq, out: ReqOutput, hidden: list[Any] | None
                          ) -> ReqOutput:
        """An embedding request's final output: the pooled vector instead of the token."""
        if out.finish_reason is not None and out.finish_reason.is_error:
            return out
        if hidden is None:  # cannot happen: the one step of the request captured it
            return dataclasses.replace(out, new_token_ids=[], finish_reason=FinishReason.error(
                "Internal error: no hidden state for the embedding", 500))
        vector = torch.tensor(hidden[0][0], dtype=torch.float32)[None, :]
        if self.classifier:  # the score head on the last position: one logit per label
            with torch.inference_mode():
                head = self.runner.model.score
                logits = head(vector.to(device=head.weight.device, dtype=head.weight.dtype))
            embedding = logits[0].float().cpu().numpy()
        else:
            embedding = pool(vector, [0, 1], self.pooling, e.req.dimensions)[0].numpy()
        return dataclasses.replace(out, new_token_ids=[], embedding=embedding,
                                   finish_reason=FinishReason.length_limit(0))

    def _decide_finish(self, e: EngineReq, tok: int, reason: int, processor_error: str | None,
                       got_token: bool) -> FinishReason | None:
        """Whether a request ends with this step's token: the core's token-level verdict, its
        logit processor's failure, its grammar, then its stop strings and regexes. A finish
        decided here (not by the core) aborts the request in the core."""
        h = e.handle
        finish = self._finish_reason(e, tok, reason)
        if processor_error is not None:  # its custom logit processor raised: end it with that
            if finish is None:
                self.core.abort(h)
            finish = FinishReason.error(processor_error, 400)
        if e.grammar is not None and got_token and (finish is None
                                                    or finish.kind is FinishKind.STOP):
            finish = self._advance_grammar(e, tok, finish)
        if finish is None and got_token and len(e.output_ids) >= e.req.sampling.min_new_tokens:
            matched = e.stop.check(e.output_ids)
            if matched is not None:
                self.core.abort(h)
                finish = FinishReason.stop_text(matched)
        return finish

    def _end_failed(self, e: EngineReq, message: str, status: int) -> FinishReason:
        if self.core.has_request(e.handle):
            self.core.abort(e.handle)
        return FinishReason.error(message, status)

    def _advance_grammar(self, e: EngineReq, tok: int,
                         finish: FinishReason | None) -> FinishReason | None:
        """Feeds the sampled token to the request's grammar; a complete grammar ends it."""
        if not e.grammar.accept_token(tok):
            if finish is None:
                self.core.abort(e.handle)
            return FinishReason.error(f"Token {tok} is not allowed by the grammar.", 500)
        if finish is None and e.grammar.is_terminated():
            self.core.abort(e.handle)  # e.g. ignore_eos: the grammar's stop token still ends it
            return FinishReason.stop_token(tok)
        return finish

    @staticmethod
    def _finish_reason(e: EngineReq, tok: int, reason: int) -> FinishReason | None:
        """The finish reason of the core's token-level verdict for a committed token."""
        if reason == int(_core.FinishReason.NONE):
            return None
        if reason == int(_core.FinishReason.STOP_TOKEN):
            return FinishReason.stop_token(tok)
        if reason == int(_core.FinishReason.LENGTH):
            sp = e.req.sampling
            limit = sp.max_new_tokens if sp.max_new_tokens is not None else len(e.output_ids)
            return FinishReason.length_limit(limit)
        return FinishReason.abort()

    def _update_throughput(self, n_tokens: int) -> None:
        t0, count = self._tput_window
        count += n_tokens
        now = time.perf_counter()
        if now - t0 >= 1.0:
            self.last_gen_throughput = count / (now - t0)
            self._tput_window = (now, 0)
        else:
            self._tput_window = (t0, count)


def local_max_total_tokens(args: ServerArgs, runner: Any) -> int:
    """The KV tokens of one rank's pool: --max-total-tokens, or what the GPU's free memory
    holds, or on a CPU a share of the available memory."""
    if args.max_total_tokens is not None:
        return args.max_total_tokens
    profiled = runner.profile_max_num_tokens(args.mem_fraction_static or 0.88)
    if profiled is not None:
        return int(profiled)
    per_token = runner.kv_bytes_per_token()
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        avail = 8 << 30
    fit = int(avail * CPU_KV_MEMORY_FRACTION // max(per_token, 1))
    return max(args.page_size * 64, min(CPU_DEFAULT_MAX_TOTAL_TOKENS, fit))


def _is_matryoshka(hf_config: Any) -> bool:
    from sglang.srt.managers.embedding_core import is_matryoshka

    return is_matryoshka(hf_config)


def with_pending_tokens(input_ids: torch.Tensor, plan_ids: np.ndarray,
                        pending: torch.Tensor) -> torch.Tensor:
    """The step's input ids with each placeholder ``-(k + 1)`` of the plan replaced by the
    previous step's k-th sampled token, gathered on the device (no host sync)."""
    if not len(plan_ids) or int(plan_ids.min()) >= 0:
        return input_ids
    index = (-input_ids - 1).clamp_(0, pending.numel() - 1)
    return torch.where(input_ids < 0, pending.to(input_ids.dtype).index_select(0, index),
                       input_ids)

