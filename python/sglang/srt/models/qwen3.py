"""Qwen3ForCausalLM: the Llama decoder with per-head RMSNorm on q and k before RoPE.

Same inputs and outputs as ``llama.LlamaForCausalLM``; biases follow ``attention_bias``
(false for the released models).
"""

from __future__ import annotations

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.models.llama import AttentionOptions, LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def attention_options(cls, config: ModelConfig) -> AttentionOptions:
        bias = config.attention_bias
        return AttentionOptions(qkv_bias=bias, o_bias=bias, qk_norm=True)
