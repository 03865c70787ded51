"""Qwen2ForCausalLM: the Llama decoder with biases on the q/k/v projections (none on o_proj).

Same inputs and outputs as ``llama.LlamaForCausalLM``; only the attention options differ.
"""

from __future__ import annotations

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.models.llama import AttentionOptions, LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def attention_options(cls, config: ModelConfig) -> AttentionOptions:
        return AttentionOptions(qkv_bias=True, o_bias=False, qk_norm=False)
