"""CudaGraphRunner: decode steps replayed from CUDA graphs, one per batch-size bucket.

A decode step of a small batch launches hundreds of kernels that each run for microseconds; on a
GPU the launches, not the math, set the step time. The runner captures the model's decode forward
once per bucket (``graph_batch_sizes``: 1, 2, 4, 8, then every 8 up to ``--cuda-graph-max-bs``)
over static input buffers, and a step of n requests copies its inputs into the buffers and
replays the smallest bucket >= n. Rows n..bucket-1 are padding: they write their K/V into the
pool's padding slot 0 and attend over it alone (``seq_len`` 1), and their logits are dropped.

Only an attention backend whose decode launch reads nothing of the step on the host
(``supports_cuda_graph``, the triton backend) can be captured. Steps with ``input_embeds``,
hidden-state capture, more requests than the largest bucket or a sequence longer than the
table width run eagerly.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from sglang.srt.layers.logits_processor import LogitsOutput
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_bs: int) -> list[int]:
    """The captured batch sizes: 1, 2, 4, 8, 16, 24, ... up to ``max_bs`` (always included)."""
    if max_bs < 1:
        raise ValueError(f"--cuda-graph-max-bs must be at least 1, got {max_bs}")
    sizes = [s for s in (1, 2, 4, 8) if s < max_bs] + list(range(16, max_bs, 8))
    return sorted(set(sizes) | {max_bs})


def bucket_for(sizes: list[int], n: int) -> int | None:
    """The smallest captured size that holds ``n`` requests, None when none does."""
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None


class StaticDecodeInputs:
    """The buffers a captured graph reads: one set for the largest bucket, sliced per bucket."""

    def __init__(self, max_bs: int, table_width: int, device: torch.device) -> None:
        def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.max_bs = max_bs
        self.table_width = table_width
        self.input_ids = zeros(max_bs)
        self.positions = zeros(max_bs)
        self.out_slots = zeros(max_bs)  # padding rows write slot 0 (the padding page)
        self.seq_lens = torch.ones(max_bs, dtype=torch.int32, device=device)
        self.row_index = torch.arange(max_bs, dtype=torch.int64, device=device)
        self.table = zeros(max_bs, table_width, dtype=torch.int32)
        self.extend_start = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.zeros32 = zeros(max_bs, dtype=torch.int32)
        self.ones32 = torch.ones(max_bs, dtype=torch.int32, device=device)

    def batch(self, size: int) -> ForwardBatch:
        """A decode ForwardBatch of ``size`` rows over the buffers (host lists: padding view)."""
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            batch_size=size,
            num_tokens=size,
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            out_slots=self.out_slots[:size],
            req_pool_indices=self.row_index[:size],
            seq_lens=self.seq_lens[:size],
            prefix_lens=self.seq_lens[:size],
            extend_lens=self.ones32[:size],
            extend_start=self.extend_start[: size + 1],
            logits_rows=self.row_index[:size],
            req_to_token=self.table[:size],
            req_pool_indices_cpu=list(range(size)),
            seq_lens_cpu=[1] * size,
            prefix_lens_cpu=[0] * size,
            extend_start_cpu=list(range(size + 1)),
        )

    def load(self, batch: ForwardBatch, size: int) -> None:
        """Copy a step's inputs in (device to device) and reset the padding rows."""
        n = batch.batch_size
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        self.out_slots[:n].copy_(batch.out_slots)
        self.seq_lens[:n].copy_(batch.seq_lens)
        rows = batch.req_to_token.index_select(0, batch.req_pool_indices)
        width = min(rows.shape[1], self.table_width)
        self.table[:n, :width].copy_(rows[:, :width])
        if size > n:
            self.out_slots[n:size].zero_()
            self.seq_lens[n:size].fill_(1)


class CudaGraphRunner:
    """Captures ``forward(batch) -> LogitsOutput`` for each bucket; ``replay`` runs a step."""

    def __init__(
        self,
        forward: Callable[[ForwardBatch], LogitsOutput],
        max_bs: int,
        table_width: int,
        device: torch.device,
    ) -> None:
        self.forward = forward
        self.sizes = graph_batch_sizes(max_bs)
        self.inputs = StaticDecodeInputs(self.sizes[-1], table_width, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, LogitsOutput] = {}
        self.device = device
        self._capture_all()

    def _capture_all(self) -> None:
        start = time.perf_counter()
        pool = None
        stream = torch.cuda.Stream(self.device)
        with torch.inference_mode():
            for size in reversed(self.sizes):  # largest first: later graphs reuse its memory
                batch = self.inputs.batch(size)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):  # warm-up: Triton compiles, cuBLAS picks its kernels
                        self.forward(batch)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.outputs[size] = self.forward(batch)
                pool = graph.pool()
                self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        logger.info(
            "captured %d CUDA graphs (decode batch sizes %s) in %.1f s",
            len(self.sizes),
            _ranges(self.sizes),
            time.perf_counter() - start,
        )

    def can_run(self, batch: ForwardBatch) -> bool:
        return (
            batch.mode == ForwardMode.DECODE
            and 0 < batch.batch_size <= self.sizes[-1]
            and batch.input_embeds is None
            and not batch.capture_hidden
            and batch.logits_rows.shape[0] == batch.batch_size
            and batch.max_seq_len <= self.inputs.table_width
        )

    def replay(self, batch: ForwardBatch) -> LogitsOutput:
        n = batch.batch_size
        size = bucket_for(self.sizes, n)
        assert size is not None, "can_run() must be checked first"
        self.inputs.load(batch, size)
        self.graphs[size].replay()
        out = self.outputs[size]
        return LogitsOutput(logits=out.logits[:n])


def _ranges(sizes: list[int]) -> Any:
    return sizes if len(sizes) <= 6 else f"{sizes[:4]} ... {sizes[-1]}"
