"""Expert-distribution recorder (``--expert-distribution-recorder-mode``) for MoE models.

An MoE layer reports each routing decision with ``recorder.on_select_experts(layer_id,
topk_ids)``; the ModelRunner brackets every forward pass with ``recorder.with_forward_pass(batch)``.
Nothing is kept until ``start_record()`` (the ``/start_expert_distribution_record`` endpoint),
which also clears what an earlier window kept; ``stop_record()`` ends the window and
``dump_record()`` writes it as a torch ``.pt`` file under ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``
(default ``/tmp``) and clears it. File contents by mode (SGLang's layout, one rank):

* ``stat``: ``expert_distribution_recorder_<time>.pt`` = ``{"rank": 0, "logical_count": int32
  [buffer_size, num_layers, num_experts], "average_utilization_rate_over_window": None}``;
  row i counts the tokens routed to each expert in the i-th recorded forward pass (a circular
  buffer of ``--expert-distribution-recorder-buffer-size`` passes; unused rows are zero).
* ``per_pass``: ``expert_distribution_recorder_<time>_0.pt`` = ``{"records": [{"forward_pass_id",
  "rank", "gatherer_key": "primary", "global_physical_count": [num_layers, num_experts]}, ...],
  "last_physical_to_logical_map": [num_layers, num_experts]}`` (identity: no expert replicas).
* ``per_token``: as ``per_pass`` plus, per record, ``input_ids``, ``positions``,
  ``extend_seq_lens``, ``forward_mode`` and ``topk_ids_of_layer`` [num_layers, num_tokens, top_k].

The layer ids are the model's decoder-layer indices; dense layers of a model with
``mlp_only_layers`` keep zero rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sglang.srt.server_args import RECORDER_MODES

if TYPE_CHECKING:
    from sglang.srt.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = 1000
DIR_ENV = "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"
NOT_ENABLED = (
    "the expert distribution recorder is off: launch an MoE model with "
    "--expert-distribution-recorder-mode stat|per_pass|per_token"
)


@dataclass(frozen=True)
class MoeLayout:
    """What the recorder needs to know of the model: its decoder layers and experts."""

    num_layers: int
    num_experts: int
    top_k: int


class ExpertDistributionRecorder:
    """The recorder of a server without ``--expert-distribution-recorder-mode``: hooks do
    nothing, and start/stop/dump raise RuntimeError (the endpoints answer 400)."""

    recording = False

    @contextlib.contextmanager
    def with_forward_pass(self, batch: ForwardBatch) -> Iterator[None]:
        yield

    def on_select_experts(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        pass

    def start_record(self) -> None:
        raise RuntimeError(NOT_ENABLED)

    def stop_record(self) -> None:
        raise RuntimeError(NOT_ENABLED)

    def dump_record(self) -> Path:
        raise RuntimeError(NOT_ENABLED)


class _PassGatherer:
    """One forward pass's routing: per-layer expert counts (and, per token, the top-k ids)."""

    def __init__(self, layout: MoeLayout, per_token: bool, device: torch.device) -> None:
        self.layout = layout
        self.per_token = per_token
        self.counts = torch.zeros(layout.num_layers, layout.num_experts, dtype=torch.int32,
                                  device=device)  # fmt: skip
        self.topk: dict[int, torch.Tensor] = {}
        self.meta: dict[str, Any] = {}

    def start(self, batch: ForwardBatch) -> None:
        self.counts.zero_()
        self.topk.clear()
        if self.per_token:
            self.meta = {
                "input_ids": batch.input_ids.tolist(),
                "positions": batch.positions.tolist(),
                "extend_seq_lens": batch.extend_lens.tolist(),
                "forward_mode": int(batch.mode),
            }

    def add(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        ids = topk_ids.reshape(-1).to(torch.int64)
        self.counts[layer_id] += torch.bincount(ids, minlength=self.layout.num_experts).to(
            torch.int32
        )
        if self.per_token:
            self.topk[layer_id] = topk_ids.to(torch.int32).cpu()

    def collect(self) -> dict[str, Any]:
        data: dict[str, Any] = {"global_physical_count": self.counts.cpu().clone()}
        if self.per_token:
            tokens = len(self.meta["input_ids"])
            shape = (self.layout.num_layers, tokens, self.layout.top_k)
            topk = torch.full(shape, -1, dtype=torch.int32)
            for layer_id, ids in self.topk.items():
                topk[layer_id, : ids.shape[0], : ids.shape[1]] = ids
            data = {**self.meta, "topk_ids_of_layer": topk, **data}
        return data


class RealExpertDistributionRecorder(ExpertDistributionRecorder):
    def __init__(
        self,
        mode: str,
        layout: MoeLayout,
        device: torch.device,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        if mode not in RECORDER_MODES:
            raise ValueError(
                f"--expert-distribution-recorder-mode must be one of {list(RECORDER_MODES)}, "
                f"got '{mode}'"
            )
        if buffer_size < 1:
            raise ValueError("--expert-distribution-recorder-buffer-size must be at least 1")
        self.mode = "stat" if mode == "stat_approx" else mode  # one rank: no approximation
        self.layout = layout
        self.buffer_size = buffer_size
        self.recording = False
        self._gatherer = _PassGatherer(layout, self.mode == "per_token", device)
        self._in_pass = False
        self._pass_id = 0
        self._records: list[dict[str, Any]] = []
        self._stat = torch.zeros(buffer_size, layout.num_layers, layout.num_experts,
                                 dtype=torch.int32)  # fmt: skip
        self._stat_next = 0

    def _clear(self) -> None:
        self._records.clear()
        self._stat.zero_()
        self._stat_next = 0

    @contextlib.contextmanager
    def with_forward_pass(self, batch: ForwardBatch) -> Iterator[None]:
        if not self.recording:
            yield
            return
        self._gatherer.start(batch)
        self._in_pass = True
        try:
            yield
        finally:
            self._in_pass = False
        self._append(self._gatherer.collect())

    def on_select_experts(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        if self._in_pass:
            self._gatherer.add(layer_id, topk_ids)

    def _append(self, data: dict[str, Any]) -> None:
        pass_id, self._pass_id = self._pass_id, self._pass_id + 1
        if self.mode == "stat":
            self._stat[self._stat_next] = data["global_physical_count"]
            self._stat_next = (self._stat_next + 1) % self.buffer_size
        else:
            self._records.append(
                {"forward_pass_id": pass_id, "rank": 0, "gatherer_key": "primary", **data}
            )

    def start_record(self) -> None:
        if self.recording:
            logger.warning("expert distribution: already recording; the window restarts")
        self._clear()
        self.recording = True

    def stop_record(self) -> None:
        if not self.recording:
            logger.warning("expert distribution: stop without a start")
        self.recording = False

    def dump_record(self) -> Path:
        """Write what the window kept (see the module docstring) and clear it; returns the path."""
        if self.mode == "stat":
            name = f"expert_distribution_recorder_{time.time()}.pt"
            output: dict[str, Any] = {
                "rank": 0,
                "logical_count": self._stat.clone(),
                "average_utilization_rate_over_window": None,
            }
        else:
            name = f"expert_distribution_recorder_{time.time()}_0.pt"
            identity = torch.arange(self.layout.num_experts, dtype=torch.int32)
            output = {
                "records": list(self._records),
                "last_physical_to_logical_map": identity.repeat(self.layout.num_layers, 1),
            }
        folder = Path(os.environ.get(DIR_ENV) or "/tmp")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        torch.save(output, path)
        logger.info("expert distribution written to %s", path)
        self._clear()
        return path


_recorder: ExpertDistributionRecorder = ExpertDistributionRecorder()


def get_global_expert_distribution_recorder() -> ExpertDistributionRecorder:
    return _recorder


def set_global_expert_distribution_recorder(recorder: ExpertDistributionRecorder) -> None:
    global _recorder
    _recorder = recorder
