"""``*ForSequenceClassification`` decoders (reward and classification models): the decoder with
a ``score`` head (hidden -> num_labels, no bias) in place of the LM head.

Served with ``--is-embedding``: the generation engine's embedding mode runs each request's prompt
and the head's logits at the last prompt token are the request's ``embedding`` (a reward model's
score is ``embedding[0]``), as in HF's ``*ForSequenceClassification`` for an unpadded sequence.
"""

from __future__ import annotations

from typing import Any

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.linear import Linear
from sglang.srt.layers.logits_processor import LogitsOutput, LogitsProcessor
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.llama import LlamaForCausalLM, Rope
from sglang.srt.models.qwen2 import Qwen2ForCausalLM


def num_labels(config: ModelConfig) -> int:
    hf = config.hf_config
    cfg: dict[str, Any] = hf.to_dict() if hasattr(hf, "to_dict") else dict(hf or {})
    labels = cfg.get("id2label") or {}
    return int(cfg.get("num_labels") or len(labels) or 2)


def label_names(hf_config: Any, model: Any) -> dict[int, str]:
    """A classification model's label names (LABEL_i when the config names none)."""
    if not getattr(model, "is_classifier", False):
        return {}
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config or {})
    names = {int(k): str(v) for k, v in (cfg.get("id2label") or {}).items()}
    return {i: names.get(i, f"LABEL_{i}") for i in range(model.num_labels)}


class ClassifierMixin:
    """Replaces the LM head by ``score``; ``forward`` returns the head's logits."""

    is_classifier = True
    supports_tensor_parallel = True  # the sharded decoder; ``score`` is replicated (small)

    def _init_score(self, config: ModelConfig, dtype: torch.dtype | None, device: Any) -> None:
        del self.lm_head  # the decoder's LM head (or its tie to the embeddings) is not used
        self.num_labels = num_labels(config)
        self.score = Linear(config.hidden_size, self.num_labels, dtype=dtype or config.dtype,
                            device=device)  # fmt: skip
        self.logits_processor = LogitsProcessor(self.num_labels)

    def forward(self, batch: ForwardBatch) -> LogitsOutput:
        fused = getattr(batch.attn_backend, "fuses_rope", False)
        cos_sin = None if fused else self.rotary_emb.lookup(batch.positions)
        hidden, residual = self.model(batch, Rope(self.rotary_emb, cos_sin))
        return self.logits_processor(hidden, residual, self.model.norm, self.score, batch)


class LlamaForSequenceClassification(ClassifierMixin, LlamaForCausalLM):
    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__(config, dtype=dtype, device=device)
        self._init_score(config, dtype, device)


class Qwen2ForSequenceClassification(ClassifierMixin, Qwen2ForCausalLM):
    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__(config, dtype=dtype, device=device)
        self._init_score(config, dtype, device)
