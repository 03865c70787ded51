"""ForwardBatch: one scheduler step's BatchPlan as torch tensors on the model's device.

Comes from ``sglang._core.Scheduler.schedule()`` (flat int32 numpy arrays, see
``csrc/include/sglang/batch_plan.h``) and the scheduler's ``req_to_token`` table; goes to
``ModelRunner.forward`` -> the model -> the attention backend. Each array is converted once per
step. On CPU everything is a zero-copy view of the plan (only the few indices that torch wants
as int64 are widened); on CUDA the arrays, and the rows of ``req_to_token`` the batch uses, are
packed into one pinned host buffer and uploaded with a single asynchronous copy.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
    from sglang.srt.mem_cache.kv_pool import KVPool


class ForwardMode(enum.IntEnum):
    """Same values as ``sglang._core.ForwardMode``."""

    IDLE = 0
    EXTEND = 1
    DECODE = 2


def table_as_tensor(table: np.ndarray) -> torch.Tensor:
    """Zero-copy CPU tensor over the scheduler's read-only ``req_to_token`` table.

    torch warns that it cannot protect a read-only array; the model only reads the table.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(table)


@dataclass
class ForwardBatch:
    """Tensors of one step. Per-request arrays have ``batch_size`` rows; per-token ``num_tokens``.

    ``req_to_token[req_pool_indices[i], :seq_lens[i]]`` are the KV slots of request i (on CUDA a
    compact copy of the batch's rows, with ``req_pool_indices = arange(batch_size)``).
    ``logits_rows`` are the token rows whose logits (and hidden states) the model returns.
    The ``*_cpu`` lists mirror the per-request arrays for Python-side loops.
    """

    mode: ForwardMode
    batch_size: int
    num_tokens: int
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_slots: torch.Tensor  # [T] int64
    req_pool_indices: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int32
    prefix_lens: torch.Tensor  # [B] int32
    extend_lens: torch.Tensor  # [B] int32
    extend_start: torch.Tensor  # [B + 1] int32
    logits_rows: torch.Tensor  # [S] int64
    req_to_token: torch.Tensor  # [rows, max_len] int32
    req_pool_indices_cpu: list[int]
    seq_lens_cpu: list[int]
    prefix_lens_cpu: list[int]
    extend_start_cpu: list[int]
    input_embeds: torch.Tensor | None = None  # [T, hidden], replaces the embedding lookup
    # [3, T] (time, height, width) positions of an M-RoPE model's step over image prompts.
    mrope_positions: torch.Tensor | None = None
    capture_hidden: bool = False
    # The step's LoRA segments (``lora.manager.LoraStep``) when some rows run with an adapter
    # (the fused C++ decode applies them too; CUDA graphs are skipped for such steps).
    lora: Any = None
    # Set by the ModelRunner before the forward pass.
    kv_pool: KVPool | None = None
    attn_backend: TorchNativeAttnBackend | None = None
    attn_metadata: Any = None

    @property
    def is_decode(self) -> bool:
        return self.mode == ForwardMode.DECODE

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_cpu) if self.seq_lens_cpu else 0

    @classmethod
    def from_plan(
        cls,
        plan: Any,
        req_to_token: torch.Tensor,
        device: torch.device | str,
        logits_rows: np.ndarray | torch.Tensor | None = None,
        input_embeds: torch.Tensor | None = None,
        capture_hidden: bool = False,
        positions: np.ndarray | None = None,
    ) -> ForwardBatch:
        """Build from a ``sglang._core.BatchPlan`` (or any object with the same arrays).

        ``req_to_token``: the scheduler's table as a CPU tensor (``table_as_tensor``).
        ``logits_rows`` defaults to ``plan.sample_rows``; ``positions`` replaces the plan's
        (the rotary positions of M-RoPE models past their prompt).
        """
        device = torch.device(device)
        rows = plan.sample_rows if logits_rows is None else logits_rows
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        arrays = _PlanArrays.read(plan, np.asarray(rows, dtype=np.int32))
        if positions is not None:
            arrays.positions = np.ascontiguousarray(positions, dtype=np.int32)
        if device.type == "cpu":
            batch = arrays.to_cpu_batch(req_to_token)
        else:
            batch = arrays.to_device_batch(req_to_token, device)
        if input_embeds is not None:
            batch.input_embeds = input_embeds.to(device)
        batch.capture_hidden = capture_hidden
        return batch


class PinnedStaging:
    """One growing page-locked host buffer per process for the step's upload: the arrays are
    concatenated into it and copied to the GPU asynchronously (one copy per step). The copy's
    event is waited on before the buffer is rewritten by the next step."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.event: Any = None

    def upload(self, parts: list[np.ndarray], device: torch.device) -> torch.Tensor:
        total = sum(len(p) for p in parts)
        if device.type != "cuda":  # (the CPU test of this path) a plain copy
            return torch.from_numpy(np.concatenate(parts)).to(device)
        if self.event is not None:
            self.event.synchronize()
        if self.buffer is None or self.buffer.numel() < total:
            self.buffer = torch.empty(max(total, 4096) * 2, dtype=torch.int32, pin_memory=True)
        host = self.buffer[:total]
        np.concatenate(parts, out=host.numpy())
        flat = host.to(device, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record(torch.cuda.current_stream(device))
        return flat


    def upload_arrays(self, arrays: dict[str, np.ndarray],
                      device: torch.device) -> dict[str, torch.Tensor]:
        """Several small arrays of 4- and 8-byte dtypes (int32, float32, int64, ...) on
        ``device`` through one ``upload``: each becomes a view of the one flat copy, with its own
        dtype and length. The 8-byte arrays go first, so every view stays aligned."""
        order = sorted(arrays, key=lambda k: -arrays[k].dtype.itemsize)
        parts, spans = [], {}
        offset = 0
        for key in order:
            a = np.ascontiguousarray(arrays[key])
            if a.dtype.itemsize not in (4, 8):
                raise TypeError(f"{key}: {a.dtype} is not a 4- or 8-byte dtype")
            words = a.reshape(-1).view(np.int32)
            parts.append(words)
            spans[key] = (offset, len(words), a.dtype)
            offset += len(words)
        flat = self.upload(parts, device)
        return {key: flat[lo:lo + size].view(_TORCH_DTYPES[np.dtype(dtype)])
                for key, (lo, size, dtype) in spans.items()}


_TORCH_DTYPES = {np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32,
                 np.dtype(np.int64): torch.int64, np.dtype(np.float64): torch.float64,
                 np.dtype(np.uint32): torch.uint32, np.dtype(np.uint64): torch.uint64}
_STAGING = PinnedStaging()


@dataclass
class _PlanArrays:
    """The numpy arrays of a plan that the forward pass reads (int32, contiguous)."""

    mode: ForwardMode
    input_ids: np.ndarray
    positions: np.ndarray
    out_slots: np.ndarray
    req_pool_indices: np.ndarray
    seq_lens: np.ndarray
    prefix_lens: np.ndarray
    extend_lens: np.ndarray
    extend_start: np.ndarray
    logits_rows: np.ndarray

    @classmethod
    def read(cls, plan: Any, logits_rows: np.ndarray) -> _PlanArrays:
        def arr(x: Any) -> np.ndarray:
            return np.ascontiguousarray(x, dtype=np.int32)

        return cls(
            mode=ForwardMode(int(plan.mode)),
            input_ids=arr(plan.input_ids),
            positions=arr(plan.positions),
            out_slots=arr(plan.out_slots),
            req_pool_indices=arr(plan.req_pool_indices),
            seq_lens=arr(plan.seq_lens),
            prefix_lens=arr(plan.prefix_lens),
            extend_lens=arr(plan.extend_lens),
            extend_start=arr(plan.extend_start),
            logits_rows=arr(logits_rows),
        )

    def _batch(
        self, tensors: dict[str, torch.Tensor], req_to_token: torch.Tensor, compact: bool
    ) -> ForwardBatch:
        pool_rows = list(range(len(self.seq_lens))) if compact else self.req_pool_indices.tolist()
        return ForwardBatch(
            mode=self.mode,
            batch_size=len(self.seq_lens),
            num_tokens=len(self.input_ids),
            input_ids=tensors["input_ids"].long(),
            positions=tensors["positions"].long(),
            out_slots=tensors["out_slots"].long(),
            req_pool_indices=tensors["req_pool_indices"].long(),
            seq_lens=tensors["seq_lens"],
            prefix_lens=tensors["prefix_lens"],
            extend_lens=tensors["extend_lens"],
            extend_start=tensors["extend_start"],
            logits_rows=tensors["logits_rows"].long(),
            req_to_token=req_to_token,
            req_pool_indices_cpu=pool_rows,
            seq_lens_cpu=self.seq_lens.tolist(),
            prefix_lens_cpu=self.prefix_lens.tolist(),
            extend_start_cpu=self.extend_start.tolist(),
        )

    def _named(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}

    def to_cpu_batch(self, req_to_token: torch.Tensor) -> ForwardBatch:
        tensors = {k: torch.from_numpy(v) for k, v in self._named().items()}
        return self._batch(tensors, req_to_token, compact=False)

    def to_device_batch(self, req_to_token: torch.Tensor, device: torch.device) -> ForwardBatch:
        """Pack the arrays and the batch's table rows into one buffer; upload it once."""
        named = self._named()
        max_len = int(self.seq_lens.max()) if len(self.seq_lens) else 0
        table = req_to_token.numpy() if isinstance(req_to_token, torch.Tensor) else req_to_token
        rows = np.ascontiguousarray(table[self.req_pool_indices, :max_len], dtype=np.int32)
        named["req_pool_indices"] = np.arange(len(self.seq_lens), dtype=np.int32)
        parts = [*named.values(), rows.reshape(-1)]
        flat = _STAGING.upload(parts, device)
        tensors, offset = {}, 0
        for name, value in named.items():
            tensors[name] = flat[offset : offset + len(value)]
            offset += len(value)
        table_rows = flat[offset:].view(len(self.seq_lens), max_len)
        return self._batch(tensors, table_rows, compact=True)
