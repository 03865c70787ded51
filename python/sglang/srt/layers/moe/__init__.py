"""Mixture-of-experts layers: the router (``topk``) and the grouped expert compute
(``fused_moe``) of the sparse MoE blocks in ``models.qwen2_moe`` / ``models.qwen3_moe``."""

from sglang.srt.layers.moe.fused_moe import (
    FusedMoE,
    PackedExperts,
    fused_experts,
    fused_experts_packed,
    moe_forward_per_expert_loop,
)
from sglang.srt.layers.moe.topk import RouterLinear, select_experts

__all__ = [
    "FusedMoE",
    "PackedExperts",
    "RouterLinear",
    "fused_experts",
    "fused_experts_packed",
    "moe_forward_per_expert_loop",
    "select_experts",
]
