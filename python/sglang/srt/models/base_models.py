"""Decoder base models without an LM head (``Qwen2Model`` as in gte-Qwen2, ``Qwen3Model``,
``LlamaModel``): embedding checkpoints whose tensors have no ``model.`` prefix.

They are the causal LMs' decoders, served with ``--is-embedding`` only (the embedding is the last
prompt token's final hidden state). The engine's embedding mode still runs one greedy step per
request; its throwaway token comes from the input embeddings used as the output projection, so no
LM head is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.models.llama import LlamaForCausalLM
from sglang.srt.models.qwen2 import Qwen2ForCausalLM
from sglang.srt.models.qwen3 import Qwen3ForCausalLM


def head_from_embeddings(config: ModelConfig) -> ModelConfig:
    """The config with the output projection tied to the input embeddings (no LM head)."""
    return dataclasses.replace(config, tie_word_embeddings=True)


class BaseModelMixin:
    """The decoder alone: checkpoint names get the ``model.`` prefix of the causal LM."""

    is_base_model = True  # embeddings only (--is-embedding)
    supports_tensor_parallel = True  # the causal LM's sharded decoder; the head is tied

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        named = ((n if n.startswith("model.") else f"model.{n}", t) for n, t in weights
                 if not n.startswith("lm_head."))  # fmt: skip
        return super().load_weights(named)  # type: ignore[misc]


class LlamaBaseModel(BaseModelMixin, LlamaForCausalLM):
    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__(head_from_embeddings(config), dtype=dtype, device=device)


class Qwen2BaseModel(BaseModelMixin, Qwen2ForCausalLM):
    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__(head_from_embeddings(config), dtype=dtype, device=device)


class Qwen3BaseModel(BaseModelMixin, Qwen3ForCausalLM):
    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__(head_from_embeddings(config), dtype=dtype, device=device)
