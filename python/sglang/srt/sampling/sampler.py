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
import functools
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


class HostCopy:
    """Device tensors on their way to the host: on a GPU non-blocking copies into pinned memory
    and one event (``get()`` waits for them alone, not for later work on the stream); on a CPU
    the tensors themselves."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._event: Any = None
        self._host = tensors
        first = next(iter(tensors.values()))
        if first.device.type == "cuda":
            self._host = {}
            for name, t in tensors.items():
                pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                pinned.copy_(t, non_blocking=True)
                self._host[name] = pinned
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(first.device))

    def get(self) -> dict[str, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return {name: t.numpy() for name, t in self._host.items()}


@dataclasses.dataclass
class SampleOutput:
    device_ids: torch.Tensor  # int32 [S], on the sampling device
    # Per row (None where not requested): (logprob of the chosen token), top list, ids list.
    # Filled when the ids reach the host (``next_ids``).
    token_logprobs: list[float | None]
    top_logprobs: list[list[tuple[float, int]] | None]
    ids_logprobs: list[list[tuple[float, int]] | None]
    # Rows whose custom logit processor raised (their logits were left unprocessed).
    processor_errors: list[CustomProcessorError] = dataclasses.field(default_factory=list)
    copy: HostCopy | None = None  # the ids and the logprob tensors, on their way to the host
    fill: Any = None  # fills the logprob lists from the host arrays, once

    @property
    def next_ids(self) -> np.ndarray:
        """The sampled ids (int32 [S]) on the host; on a GPU this waits for their copy. The
        logprob lists are filled then."""
        if self.copy is None:
            self.copy = HostCopy({"ids": self.device_ids})
        host = self.copy.get()
        if self.fill is not None:
            fill, self.fill = self.fill, None
            fill(host)
        return host["ids"]


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
        logprob_rows = [i for i, r in enumerate(rows) if r.return_logprob]
        if logprob_rows:
            host.update(_logprob_inputs(rows, logprob_rows, temperature))
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
        out = SampleOutput(next_ids, [None] * n, [None] * n, [None] * n, processor_errors)
        to_host = {"ids": next_ids}
        if logprob_rows:
            to_host.update(_logprobs_on_device(logits, rows, logprob_rows, dev, next_ids))
            out.fill = functools.partial(_fill_logprobs, out, rows, logprob_rows)
        out.copy = HostCopy(to_host)  # started now: the engine reads it a step later
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


def _logprob_inputs(rows: Sequence[RowSampling], want: list[int],
                    temperature: np.ndarray) -> dict[str, np.ndarray]:
    """The host arrays of the logprob rows, uploaded with the step's other sampling arrays: the
    rows, their temperatures, and the ids of ``token_ids_logprob`` padded to one width."""
    arrays = {"lp_rows": np.array(want, dtype=np.int64), "lp_temps": temperature[want]}
    width = max(len(rows[i].token_ids_logprob or ()) for i in want)
    if width:
        ids = np.zeros((len(want), width), dtype=np.int64)
        for j, i in enumerate(want):
            asked = rows[i].token_ids_logprob or ()
            ids[j, :len(asked)] = asked
        arrays["lp_ids"] = ids.reshape(-1)
    return arrays


def _logprobs_on_device(logits: torch.Tensor, rows: Sequence[RowSampling], want: list[int],
                        dev: dict[str, torch.Tensor], next_ids: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
    """Log-softmax of the processed logits at each row's temperature: the chosen token's
    logprob, the top ``max(top_logprobs_num)`` and the asked ids' logprobs, all on the device."""
    idx = dev["lp_rows"]
    lp = torch.log_softmax(logits.index_select(0, idx) / dev["lp_temps"].unsqueeze(1), dim=-1)
    out = {"lp_chosen": lp.gather(1, next_ids.index_select(0, idx).long().unsqueeze(1))}
    k = min(max(rows[i].top_logprobs_num for i in want), lp.shape[1])
    if k > 0:
        out["lp_top_vals"], out["lp_top_ids"] = torch.topk(lp, k)
    if "lp_ids" in dev:
        out["lp_ids_vals"] = lp.gather(1, dev["lp_ids"].view(len(want), -1))
    return out


def _fill_logprobs(out: SampleOutput, rows: Sequence[RowSampling], want: list[int],
                   host: dict[str, np.ndarray]) -> None:
    for j, i in enumerate(want):
        r = rows[i]
        out.token_logprobs[i] = float(host["lp_chosen"][j, 0])
        if r.top_logprobs_num > 0:
            top = r.top_logprobs_num
            out.top_logprobs[i] = list(zip(host["lp_top_vals"][j, :top].tolist(),
                                           host["lp_top_ids"][j, :top].tolist()))
        if r.token_ids_logprob:
            vals = host["lp_ids_vals"][j]
            out.ids_logprobs[i] = [(float(vals[c]), t) for c, t in enumerate(r.token_ids_logprob)]
