"""Batch sampling in the engine process: logits of the sampled rows -> next token ids (+ logprobs).

Inputs come from the model runner (fp32 logits, one row per entry of ``plan.sample_rows``), the
scheduler's plan (penalty and min_new_tokens ban CSR arrays) and each request's normalised sampling
parameters (plus the engine's grammar bitmask). Order: penalties, min_new_tokens ban, grammar
bitmask, logit_bias, custom logit processors, then temperature / top-k / top-p / min-p and the
draw. The fused kernels (``sglang.srt.sampling.kernels``) do the work in place; this module only
gathers the per-row arrays. Logprobs are the log-softmax of the processed, temperature-scaled
logits (for greedy requests: of the processed logits), like SGLang's sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sglang.srt.sampling import kernels
from sglang.srt.sampling.custom_logit_processor import (
    REQ_KEY,
    CustomProcessorError,
    ReqView,
    apply_custom_logit_processors,
)
from sglang.srt.sampling.sampling_params import SamplingParams


@dataclasses.dataclass
class RowSampling:
    """The sampling state of one request as the sampler reads it (normalised once)."""

    params: SamplingParams
    seed: int
    logit_bias_ids: np.ndarray | None = None  # int32
    logit_bias_values: np.ndarray | None = None  # float32
    return_logprob: bool = False
    top_logprobs_num: int = 0
    token_ids_logprob: list[int] | None = None
    custom_logit_processor: str | None = None
    custom_params: dict | None = None  # the request's custom_params plus "__req__"

    @classmethod
    def build(
        cls,
        params: SamplingParams,
        seed: int,
        return_logprob: bool,
        top_logprobs_num: int,
        token_ids_logprob: list[int] | None,
        custom_logit_processor: str | None = None,
        req_view: ReqView | None = None,
    ) -> RowSampling:
        row = cls(
            params=params,
            seed=seed & 0xFFFFFFFFFFFFFFFF,
            return_logprob=return_logprob,
            top_logprobs_num=top_logprobs_num,
            token_ids_logprob=token_ids_logprob,
            custom_logit_processor=custom_logit_processor,
        )
        if custom_logit_processor:
            row.custom_params = dict(params.custom_params or {})
            row.custom_params[REQ_KEY] = req_view
        if params.logit_bias:
            items = sorted((int(k), float(v)) for k, v in params.logit_bias.items())
            row.logit_bias_ids = np.array([k for k, _ in items], dtype=np.int32)
            row.logit_bias_values = np.array([v for _, v in items], dtype=np.float32)
        return row


class TokenCopy:
    """The sampled ids on their way to the host: on a GPU a non-blocking copy into pinned memory
    (``numpy()`` waits for it alone, not for later work on the stream); on a CPU the ids."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.device_ids = ids
        self._event: Any = None
        if ids.device.type == "cuda":
            self._host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self._host.copy_(ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(ids.device))
        else:
            self._host = ids

    def numpy(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host.numpy()


@dataclasses.dataclass
class SampleOutput:
    tokens: TokenCopy  # int32 [S]: ``device_ids`` on the device, ``next_ids`` on the host
    # Per row (None where not requested): (logprob of the chosen token), top list, ids list.
    token_logprobs: list[float | None]
    top_logprobs: list[list[tuple[float, int]] | None]
    ids_logprobs: list[list[tuple[float, int]] | None]
    # Rows whose custom logit processor raised (their logits were left unprocessed).
    processor_errors: list[CustomProcessorError] = dataclasses.field(default_factory=list)

    @property
    def next_ids(self) -> np.ndarray:
        """The sampled ids on the host (on a GPU: waits for their copy)."""
        return self.tokens.numpy()

    @property
    def device_ids(self) -> torch.Tensor:
        return self.tokens.device_ids


class BatchSampler:
    def __init__(self, device: torch.device, num_threads: int = 0) -> None:
        from sglang.srt.model_executor.forward_batch import PinnedStaging

        self.device = device
        self.num_threads = num_threads
        self.staging = PinnedStaging()  # on CUDA: the step's arrays in one pinned copy

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def _upload(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The step's per-row arrays on the device: views of the numpy arrays on a CPU, one
        pinned host-to-device copy for all of them on a GPU."""
        if self.device.type == "cpu":
            return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        return self.staging.upload_arrays(arrays, self.device)

    def sample(
        self,
        logits: torch.Tensor,
        rows: Sequence[RowSampling],
        offsets: np.ndarray,
        penalty_csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        ban_csr: tuple[np.ndarray, np.ndarray] | None,
        grammar_bitmask: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> SampleOutput:
        """Samples one token per row of ``logits`` (fp32 [S, V], modified in place).

        ``grammar_bitmask``: (int32 [G, words] token bitmask, int32 [S] row -> bitmask row or -1)
        for the rows under a grammar."""
        n = len(rows)
        assert logits.shape[0] == n and logits.dtype == torch.float32
        temperature = np.array([r.params.temperature for r in rows], dtype=np.float32)
        host = {
            "temperature": temperature,
            "top_k": np.array([min(r.params.top_k, 1 << 30) for r in rows], dtype=np.int32),
            "top_p": np.array([r.params.top_p for r in rows], dtype=np.float32),
            "min_p": np.array([r.params.min_p for r in rows], dtype=np.float32),
            "seeds": np.array([r.seed for r in rows], dtype=np.uint64).view(np.int64),
            "offsets": np.asarray(offsets, dtype=np.int64),
        }
        penalties = penalty_csr is not None and any(r.params.has_penalties for r in rows)
        if penalties:
            host.update(zip(("pen_indptr", "pen_ids", "pen_counts"), penalty_csr, strict=True))
            host["freq"] = np.array([r.params.frequency_penalty for r in rows], dtype=np.float32)
            host["pres"] = np.array([r.params.presence_penalty for r in rows], dtype=np.float32)
            host["rep"] = np.array([r.params.repetition_penalty for r in rows], dtype=np.float32)
        if ban_csr is not None:
            host.update(zip(("ban_indptr", "ban_ids"), ban_csr, strict=True))
        dev = self._upload(host)
        if penalties:
            kernels.apply_penalties(
                logits, dev["pen_indptr"], dev["pen_ids"], dev["pen_counts"], dev["freq"],
                dev["pres"], dev["rep"], num_threads=self.num_threads)
        if ban_csr is not None:
            kernels.apply_token_ban(logits, dev["ban_indptr"], dev["ban_ids"])
        if grammar_bitmask is not None:
            kernels.apply_token_bitmask(logits, *grammar_bitmask)
        if any(r.logit_bias_ids is not None for r in rows):
            self._apply_bias(logits, rows)
        processor_errors: list[CustomProcessorError] = []
        if any(r.custom_logit_processor for r in rows):
            processor_errors = apply_custom_logit_processors(
                logits, [r.custom_logit_processor for r in rows],
                [r.custom_params for r in rows])

        next_ids = kernels.sample(
            logits, dev["temperature"], dev["top_k"], dev["top_p"], dev["min_p"], dev["seeds"],
            dev["offsets"], num_threads=self.num_threads)
        out = SampleOutput(TokenCopy(next_ids), [None] * n, [None] * n, [None] * n,
                           processor_errors)
        if any(r.return_logprob for r in rows):
            self._logprobs(logits, rows, temperature, out.next_ids, out)
        return out

    def _apply_bias(self, logits: torch.Tensor, rows: Sequence[RowSampling]) -> None:
        indptr = [0]
        ids: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for r in rows:
            if r.logit_bias_ids is not None:
                ids.append(r.logit_bias_ids)
                values.append(r.logit_bias_values)
                indptr.append(indptr[-1] + len(r.logit_bias_ids))
            else:
                indptr.append(indptr[-1])
        kernels.apply_logit_bias(
            logits,
            self._tensor(np.array(indptr, dtype=np.int32)),
            self._tensor(np.concatenate(ids).astype(np.int32)),
            self._tensor(np.concatenate(values).astype(np.float32)),
        )

    @staticmethod
    def _logprobs(
        logits: torch.Tensor,
        rows: Sequence[RowSampling],
        temperature: np.ndarray,
        next_np: np.ndarray,
        out: SampleOutput,
    ) -> None:
        want = [i for i, r in enumerate(rows) if r.return_logprob]
        idx = torch.tensor(want, dtype=torch.long, device=logits.device)
        temps = torch.from_numpy(temperature[want]).to(logits.device).unsqueeze(1)
        logprobs = torch.log_softmax(logits.index_select(0, idx) / temps, dim=-1).cpu()
        for k, i in enumerate(want):
            row = logprobs[k]
            out.token_logprobs[i] = float(row[int(next_np[i])])
            r = rows[i]
            if r.top_logprobs_num > 0:
                vals, ids = torch.topk(row, min(r.top_logprobs_num, row.numel()))
                out.top_logprobs[i] = list(zip(vals.tolist(), ids.tolist()))
            if r.token_ids_logprob:
                out.ids_logprobs[i] = [(float(row[t]), t) for t in r.token_ids_logprob]
