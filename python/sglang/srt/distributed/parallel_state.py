"""The tensor-parallel (TP) group of a process and the collectives the sharded layers use.

One process per TP rank calls ``init_tp_group(rank, size, init_method, backend)`` (a
``torch.distributed`` process group: gloo on CPU, NCCL on CUDA) and builds its model inside
``tp_group_scope(group)`` (the ModelRunner does both). Every sharded layer (the column- and
row-parallel linears of ``layers.linear``, ``VocabParallelEmbedding``, ``FusedMoE``) reads the
group once in its constructor (``get_tp_group()``) to size its shard of the weights, and keeps it
for its collectives. Outside a scope the group is the trivial one (rank 0 of 1): layers hold the
full tensors and every collective returns its input untouched without calling
``torch.distributed``, so a single-rank model runs the code it ran before TP existed.

Head splits follow vLLM / SGLang's ``QKVParallelLinear``: attention heads are divided evenly
over the ranks; KV heads too when there are at least as many as ranks, else each rank holds one
KV head, shared by ``size // num_kv_heads`` consecutive ranks (``split_heads``,
``kv_head_range``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPGroup:
    """This process's place in a TP group: ``rank`` of ``size``, and the ``torch.distributed``
    process group (None for size 1). Collectives must be called by every rank of the group in
    the same order; with size 1 they return their input and cost nothing."""

    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed.ProcessGroup

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"TP rank {self.rank} is not in 0..{self.size - 1}")
        if self.size > 1 and self.group is None:
            raise ValueError(f"a TP group of size {self.size} needs a torch.distributed group")

    @property
    def backend(self) -> str | None:
        return None if self.group is None else str(dist.get_backend(self.group))

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place; returns it."""
        if self.size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The ranks' tensors (same shape on every rank) concatenated along ``dim`` in rank
        order: a new tensor (``tensor`` itself for size 1)."""
        if self.size == 1:
            return tensor
        part = tensor.contiguous()
        if self.backend == "nccl":
            out = part.new_empty((self.size, *part.shape))
            dist.all_gather_into_tensor(out, part, group=self.group)
            parts = list(out.unbind(0))
        else:
            parts = [torch.empty_like(part) for _ in range(self.size)]
            dist.all_gather(parts, part, group=self.group)
        return torch.cat(parts, dim=dim)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``tensor`` on every rank with rank ``src``'s (in place); returns it."""
        if self.size > 1:
            dist.broadcast(tensor, src=self._global(src), group=self.group)
        return tensor

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank (others pass anything, e.g. None)."""
        if self.size == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=self._global(src), group=self.group)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.group)

    def _global(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank)


SINGLE = TPGroup()
_current = SINGLE


def get_tp_group() -> TPGroup:
    """The group of the model being built (``tp_group_scope``); the trivial one otherwise."""
    return _current


@contextlib.contextmanager
def tp_group_scope(group: TPGroup) -> Iterator[TPGroup]:
    """Layers constructed inside take ``group`` (restored to the previous group on exit)."""
    global _current
    previous, _current = _current, group
    try:
        yield group
    finally:
        _current = previous


def default_backend(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_tp_group(
    rank: int,
    size: int,
    init_method: str | None = "env://",
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> TPGroup:
    """Join the TP group of ``size`` processes as ``rank`` (a blocking rendezvous through
    ``init_method``: ``tcp://host:port``, ``file:///path`` or ``env://``). Initializes the
    default process group of this process (the TP group is the whole world); returns the
    trivial group for size 1 without touching ``torch.distributed``. On CUDA, call
    ``torch.cuda.set_device`` first (NCCL binds each rank to its current device)."""
    if size == 1:
        return SINGLE
    if not dist.is_available():
        raise RuntimeError("tensor parallelism needs torch.distributed, absent from this torch")
    if dist.is_initialized():
        if dist.get_world_size() != size or dist.get_rank() != rank:
            raise ValueError(
                f"torch.distributed is already initialized as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, not rank {rank} of {size}"
            )
    else:
        dist.init_process_group(
            backend or ("nccl" if torch.cuda.is_available() else "gloo"),
            init_method=init_method,
            world_size=size,
            rank=rank,
            timeout=timedelta(seconds=timeout_s),
        )
    return TPGroup(rank, size, dist.group.WORLD)


def destroy_tp_group() -> None:
    """Tear down what ``init_tp_group`` set up (no-op when nothing was)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def divide(total: int, size: int, what: str) -> int:
    """``total // size``; ValueError naming ``what`` when ``size`` does not divide it."""
    if total % size:
        raise ValueError(
            f"tensor parallelism: {what} ({total}) is not divisible by the TP size ({size})"
        )
    return total // size


def kv_heads_per_rank(num_kv_heads: int, size: int) -> int:
    """KV heads each of ``size`` ranks holds (its own slice, or one replicated head)."""
    if num_kv_heads >= size:
        return divide(num_kv_heads, size, "the number of KV heads")
    if size % num_kv_heads:
        raise ValueError(
            f"tensor parallelism: {num_kv_heads} KV heads cannot be replicated over {size} "
            "ranks (the TP size must be a multiple of the KV heads when it exceeds them)"
        )
    return 1


def split_heads(num_heads: int, num_kv_heads: int, size: int) -> tuple[int, int]:
    """(attention heads, KV heads) of each of ``size`` ranks."""
    return divide(num_heads, size, "the number of attention heads"), kv_heads_per_rank(
        num_kv_heads, size
    )


def kv_head_range(num_kv_heads: int, rank: int, size: int) -> tuple[int, int]:
    """(first KV head, count) that ``rank`` holds: its own slice, or the one head it shares
    with ``size // num_kv_heads`` consecutive ranks (vLLM's ``tp_rank // replicas``)."""
    return rank * num_kv_heads // size, kv_heads_per_rank(num_kv_heads, size)
