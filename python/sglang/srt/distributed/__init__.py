"""Tensor parallelism on ``torch.distributed`` (gloo on CPU, NCCL on CUDA): see
``parallel_state``."""

from sglang.srt.distributed.parallel_state import (
    TPGroup,
    destroy_tp_group,
    divide,
    get_tp_group,
    init_tp_group,
    kv_head_range,
    kv_heads_per_rank,
    split_heads,
    tp_group_scope,
)

__all__ = [
    "TPGroup",
    "destroy_tp_group",
    "divide",
    "get_tp_group",
    "init_tp_group",
    "kv_head_range",
    "kv_heads_per_rank",
    "split_heads",
    "tp_group_scope",
]
