"""The router of a mixture-of-experts block: which experts each token goes to, with what weight.

Input: the router's logits [num_tokens, num_experts] (the ``gate`` projection of the hidden
states, in the model's dtype). Output: ``topk_weights`` float32 [num_tokens, top_k] and
``topk_ids`` int64 [num_tokens, top_k], the k most probable experts of each token (descending),
as transformers' Qwen2-MoE / Qwen3-MoE ``TopKRouter`` computes them: softmax in float32 over all
experts, top-k, and with ``renormalize`` (``norm_topk_prob``) the k weights rescaled to sum to 1.
They go to ``fused_moe.fused_experts`` (which rounds the weights to the activations' dtype, as
transformers does) and to the expert-distribution recorder.
"""

from __future__ import annotations

import torch

from sglang.srt.layers.linear import Linear


def select_experts(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights float32, topk_ids int64), both [num_tokens, top_k]; new tensors."""
    if not 0 < top_k <= router_logits.shape[-1]:
        raise ValueError(f"top_k must be in 1..{router_logits.shape[-1]}, got {top_k}")
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    topk_weights, topk_ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        topk_weights /= topk_weights.sum(dim=-1, keepdim=True)
    return topk_weights, topk_ids


class RouterLinear(Linear):
    """The router projection (hidden -> num_experts, no bias). Stays dense under ``w8a16``:
    its rounding decides which experts run (SGLang does not quantize the gate either)."""

    def __init__(self, hidden_size: int, num_experts: int, **kw: object) -> None:
        super().__init__(hidden_size, num_experts, False, **kw)  # type: ignore[arg-type]

    def finalize_weights(self, quantization: str = "none") -> None:
        if quantization != "w8a16":
            super().finalize_weights(quantization)
