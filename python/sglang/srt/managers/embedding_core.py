"""EmbeddingEngineCore: the engine of an ``--is-embedding`` server with an encoder model (BERT).

An encoder attends in both directions: its requests share no prefix and need no KV cache, so they
skip the C++ scheduler. Requests wait in one FIFO queue; a step takes the longest prefix of the
queue that fits ``--max-running-requests`` and ``--max-prefill-tokens`` (always at least one
request), runs the encoder over those whole sequences, pools one vector per request
(``layers.pooler``, configured from the checkpoint's sentence-transformers files) and answers
each request with a final ``ReqOutput`` carrying its ``embedding``. It has the engine interface
the engine process drives (``add_request``, ``step``, ``abort``, ``idle``, ``flush_cache``,
``internal_state``, ``ready_info``), so the process loop and the HTTP side are shared with
generation.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import numpy as np
import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.hf_transformers_utils import get_config
from sglang.srt.layers.pooler import PoolingConfig, pool, pooling_config
from sglang.srt.managers.finish_reason import FinishReason
from sglang.srt.managers.io_struct import (
    WEIGHTS_BUSY,
    EngineReady,
    ReqOutput,
    RequestError,
    TokenizedGenerateReq,
    UpdateWeightsFromDiskReq,
    UpdateWeightsFromDiskResp,
)
from sglang.srt.model_executor.model_runner import resolve_device
from sglang.srt.model_loader.loader import (
    WEIGHTS_UPDATED,
    WeightUpdateError,
    load_model,
    load_replacement,
)
from sglang.srt.model_loader.resolve import resolve_model_path
from sglang.srt.models.sequence_classification import label_names
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)

# Encoders pool the first token unless their sentence-transformers files say otherwise (SGLang's
# BERT default), normalised.
ENCODER_POOLING = PoolingConfig("cls", normalize=True)


def serves_encoder(server_args: ServerArgs) -> bool:
    """Whether the model is an encoder (served by EmbeddingEngineCore) rather than a decoder
    (the generation engine, in its embedding mode)."""
    from sglang.srt.models.registry import get_model_class

    source = resolve_model_path(server_args.model_path)
    config = ModelConfig.from_hf_config(get_config(source, server_args.trust_remote_code))
    return bool(getattr(get_model_class(config.architecture), "is_encoder", False))


def is_matryoshka(hf_config: Any) -> bool:
    """Whether the checkpoint declares Matryoshka embeddings (``dimensions`` may cut them)."""
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config or {})
    return bool(cfg.get("is_matryoshka") or cfg.get("matryoshka_dimensions"))


class EmbeddingEngineCore:
    def __init__(self, server_args: ServerArgs) -> None:
        self.args = server_args
        torch.manual_seed(server_args.random_seed)
        self.device = resolve_device(server_args.device)
        self.source = resolve_model_path(server_args.model_path)
        hf_config = get_config(self.source, trust_remote_code=server_args.trust_remote_code)
        self.model_config = ModelConfig.from_hf_config(
            hf_config,
            context_length=server_args.context_length,
            dtype=server_args.dtype,
            device=self.device,
        )
        self.model = load_model(
            self.source,
            self.model_config,
            load_format=server_args.load_format,
            device=self.device,
            seed=server_args.random_seed,
        )
        if not getattr(self.model, "is_encoder", False):
            raise ValueError(f"{self.model_config.architecture} is not an encoder model")
        self._tune_cpu_gemms()
        self.max_len = min(self.model.max_positions, self.model_config.context_length)
        self.classifier = bool(getattr(self.model, "is_classifier", False))
        self.pooling = pooling_config(self.source.folder, ENCODER_POOLING)
        self.matryoshka = is_matryoshka(hf_config)
        self.queue: collections.deque[TokenizedGenerateReq] = collections.deque()
        self.forward_ct = 0
        logger.info(
            "embedding model %s (%s) on %s in %s: %s pooling%s, at most %d tokens",
            server_args.model_path,
            self.model_config.architecture,
            self.device,
            self.model_config.dtype,
            self.pooling.mode,
            ", normalized" if self.pooling.normalize else "",
            self.max_len,
        )

    def _tune_cpu_gemms(self) -> None:
        """oneDNN for the encoder's projections where it beats F.linear on this CPU (measured
        on the largest projection; see ``layers.onednn``)."""
        if self.device.type != "cpu":
            return
        from sglang.srt.layers import onednn

        weights = [m.weight for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        if weights and onednn.calibrate(max(weights, key=lambda w: w.numel()).data):
            self.model.enable_onednn()

    # ---- requests --------------------------------------------------------------------------------
    def add_request(self, req: TokenizedGenerateReq) -> RequestError | None:
        if any(q.rid == req.rid for q in self.queue):
            return RequestError(req.rid, f"Duplicate request ID: {req.rid}")
        n = len(req.input_ids)
        if n == 0:
            return RequestError(req.rid, "input_ids cannot be empty.")
        if req.token_type_ids is not None and len(req.token_type_ids) != n:
            return RequestError(req.rid, "token_type_ids must have one entry per input token.")
        if n > self.max_len:
            return RequestError(
                req.rid,
                f"The input ({n} tokens) is longer than the model's context length "
                f"({self.max_len} tokens).",
            )
        vocab = self.model_config.vocab_size
        if min(req.input_ids) < 0 or max(req.input_ids) >= vocab:
            return RequestError(req.rid, f"input_ids must be in [0, {vocab}) (the vocabulary).")
        limit = self.args.max_queued_requests
        if limit is not None and len(self.queue) >= limit:
            from sglang.srt.managers.engine_core import QUEUE_FULL

            return RequestError(req.rid, QUEUE_FULL, 503)
        self.queue.append(req)
        return None

    def abort(self, rid: str, abort_all: bool = False, message: str = "Aborted") -> list[ReqOutput]:
        gone = [q for q in self.queue if abort_all or q.rid == rid]
        for q in gone:
            self.queue.remove(q)
        return [self._output(q, FinishReason.abort(message)) for q in gone]

    # ---- one step --------------------------------------------------------------------------------
    def _take_batch(self) -> list[TokenizedGenerateReq]:
        batch, tokens = [], 0
        budget = self.args.max_prefill_tokens
        while self.queue and len(batch) < self.args.max_running_requests:
            n = len(self.queue[0].input_ids)
            if batch and tokens + n > budget:
                break
            batch.append(self.queue.popleft())
            tokens += n
        return batch

    def step(self) -> list[ReqOutput] | None:
        batch = self._take_batch()
        if not batch:
            return None
        try:
            vectors = self._embed(batch)
        except Exception as exc:  # one failing batch ends its requests, not the engine
            logger.exception("an embedding step failed; its requests end with an error")
            finish = FinishReason.error(
                f"Internal error while running the request: {type(exc).__name__}: {exc}", 500
            )
            return [self._output(q, finish) for q in batch]
        self.forward_ct += 1
        return [
            self._output(q, FinishReason.length_limit(0), vec)
            for q, vec in zip(batch, vectors, strict=True)
        ]

    def _embed(self, batch: list[TokenizedGenerateReq]) -> list[np.ndarray]:
        starts = [0]
        for q in batch:
            starts.append(starts[-1] + len(q.input_ids))
        ids = torch.tensor([t for q in batch for t in q.input_ids], device=self.device)
        types = None
        if any(q.token_type_ids for q in batch):
            types = torch.tensor([t for q in batch for t in (q.token_type_ids or
                                                             [0] * len(q.input_ids))],
                                 device=self.device)  # fmt: skip
        with torch.inference_mode():
            hidden = self.model(ids, starts, types)
            if self.classifier:  # a cross-encoder / classifier: the head's logits
                return list(self.model.classify(hidden, starts).cpu().numpy())
            pooled = pool(hidden, starts, self.pooling).cpu()
        out = []
        for q, row in zip(batch, pooled, strict=True):
            if q.dimensions is not None:  # Matryoshka: cut, then normalise again
                row = pool(row[None, :], [0, 1], self.pooling, q.dimensions)[0]
            out.append(row.numpy())
        return out

    @staticmethod
    def _output(
        req: TokenizedGenerateReq, finish: FinishReason, embedding: np.ndarray | None = None
    ) -> ReqOutput:
        return ReqOutput(
            rid=req.rid,
            new_token_ids=[],
            finish_reason=finish,
            prompt_tokens=len(req.input_ids),
            cached_tokens=0,
            num_retractions=0,
            embedding=embedding,
        )

    # ---- state -----------------------------------------------------------------------------------
    def idle(self) -> bool:
        return not self.queue

    def flush_cache(self) -> bool:
        return True  # an encoder keeps no cache

    def update_weights_from_disk(self, req: UpdateWeightsFromDiskReq) -> UpdateWeightsFromDiskResp:
        if not self.idle():
            return UpdateWeightsFromDiskResp(False, WEIGHTS_BUSY)
        try:
            self.model, self.model_config, self.source = load_replacement(
                self.model_config, req.model_path, req.load_format, self.device)
        except WeightUpdateError as exc:
            return UpdateWeightsFromDiskResp(False, str(exc))
        self._tune_cpu_gemms()
        return UpdateWeightsFromDiskResp(True, WEIGHTS_UPDATED)

    def num_queued(self) -> int:
        return len(self.queue)

    def internal_state(self) -> dict[str, Any]:
        return {
            "num_running_reqs": 0,
            "num_waiting_reqs": len(self.queue),
            "num_used_tokens": 0,  # no KV cache
            "forward_ct": self.forward_ct,
            "idle": self.idle(),
            "integrity_ok": True,
            "pooling": self.pooling.mode,
            "normalize": self.pooling.normalize,
        }

    def ready_info(self) -> EngineReady:
        mc = self.model_config
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return EngineReady(
            max_total_num_tokens=int(self.args.max_prefill_tokens),
            max_req_input_len=int(self.max_len),
            max_sequence_len=int(self.max_len),
            context_length=int(self.max_len),
            vocab_size=int(mc.vocab_size),
            hidden_size=int(mc.hidden_size),
            eos_token_ids=[],
            max_running_requests=int(self.args.max_running_requests),
            architectures=[mc.architecture],
            model_type=str(mc.model_type),
            device=str(self.device),
            dtype=str(mc.dtype).replace("torch.", ""),
            memory_usage={
                "weight": weight_bytes / 2**30,
                "kvcache": 0.0,
                "token_capacity": 0,
                "graph": 0.0,
            },
            is_embedding=True,
            matryoshka=self.matryoshka,
            id2label=label_names(self.model_config.hf_config, self.model),
        )
