"""Encoder cross-encoders and classifiers: ``BertForSequenceClassification`` (ms-marco MiniLM
rerankers) and ``XLMRobertaForSequenceClassification`` (bge-reranker-v2-m3).

The encoder runs a batch of whole sequences (a query and a document tokenized as one pair, the
document's tokens with token type 1 where the model has token types); ``classify`` turns the first
token's final hidden state into the head's logits, one row per sequence, as the HF classes do. A
single-logit head's value is a reranker's relevance score (raw, no sigmoid: SGLang's scores).
Served with ``--is-embedding`` by ``EmbeddingEngineCore``: ``/v1/rerank``, ``/classify``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.models.bert import BertModel, XLMRobertaModel
from sglang.srt.models.sequence_classification import num_labels


class BertPooler(nn.Module):
    def __init__(self, hidden: int, **kw: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden, **kw)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first))


class RobertaClassificationHead(nn.Module):
    """dense -> tanh -> out_proj on the first token (``<s>``)."""

    def __init__(self, hidden: int, labels: int, **kw: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden, **kw)
        self.out_proj = nn.Linear(hidden, labels, **kw)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(first)))


class EncoderClassifierMixin:
    """``classify(hidden, starts)`` -> float32 logits [sequences, num_labels]."""

    is_classifier = True
    num_labels: int

    def head(self, first: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, hidden: torch.Tensor, starts: list[int]) -> torch.Tensor:
        first = hidden.index_select(0, torch.tensor(starts[:-1], device=hidden.device))
        return self.head(first).float()


class BertForSequenceClassification(EncoderClassifierMixin, BertModel):
    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__(config, dtype=dtype, device=device)
        kw = {"dtype": dtype or config.dtype, "device": device}
        self.num_labels = num_labels(config)
        self.pooler = BertPooler(config.hidden_size, **kw)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels, **kw)

    def head(self, first: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooler(first))


class XLMRobertaForSequenceClassification(EncoderClassifierMixin, XLMRobertaModel):
    def __init__(self, config: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__(config, dtype=dtype, device=device)
        kw = {"dtype": dtype or config.dtype, "device": device}
        self.num_labels = num_labels(config)
        self.classifier = RobertaClassificationHead(config.hidden_size, self.num_labels, **kw)

    def head(self, first: torch.Tensor) -> torch.Tensor:
        return self.classifier(first)
