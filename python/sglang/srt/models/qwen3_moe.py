"""Qwen3MoeForCausalLM (Qwen3-30B-A3B, Qwen3-235B-A22B): the Qwen3 decoder (per-head q/k
RMSNorm before RoPE, biases per ``attention_bias``) with the sparse MoE blocks of
``qwen2_moe`` and no shared expert.

Same inputs, outputs and checkpoint names as ``qwen2_moe.Qwen2MoeForCausalLM``.
"""

from __future__ import annotations

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.models.llama import AttentionOptions
from sglang.srt.models.qwen2_moe import Qwen2MoeForCausalLM


class Qwen3MoeForCausalLM(Qwen2MoeForCausalLM):
    has_shared_expert = False

    @classmethod
    def attention_options(cls, config: ModelConfig) -> AttentionOptions:
        bias = config.attention_bias
        return AttentionOptions(qkv_bias=bias, o_bias=bias, qk_norm=True)
