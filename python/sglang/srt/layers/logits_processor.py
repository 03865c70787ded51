"""LogitsProcessor: final hidden states of the requested rows -> lm_head -> float32 logits.

Input: the last decoder layer's output and residual for all tokens of the step, the LM head (a
``Linear``, or the ``VocabEmbedding`` of a tied model), and
``ForwardBatch.logits_rows`` (the sampled rows by default, every extend row when the engine
needs prompt logprobs). Only those rows go through the final norm and the vocabulary
projection. Output: ``LogitsOutput`` for the engine's samplers and logprob code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sglang.srt.layers.vocab_embedding import VocabEmbedding

if TYPE_CHECKING:
    from sglang.srt.layers.layernorm import RMSNorm
    from sglang.srt.model_executor.forward_batch import ForwardBatch


@dataclass
class LogitsOutput:
    """``logits``: float32 [len(logits_rows), vocab]; ``hidden_states``: the final-norm hidden
    states of the same rows (model dtype) when ``ForwardBatch.capture_hidden`` is set."""

    logits: torch.Tensor
    hidden_states: torch.Tensor | None = None


class LogitsProcessor(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        norm: RMSNorm,
        lm_head: nn.Module,
        batch: ForwardBatch,
    ) -> LogitsOutput:
        rows = batch.logits_rows
        picked = hidden.index_select(0, rows)
        if residual is None:
            normed = norm(picked)
        else:
            normed, _ = norm(picked, residual.index_select(0, rows))
        project = lm_head.project if isinstance(lm_head, VocabEmbedding) else lm_head
        logits = project(normed).float()
        return LogitsOutput(logits=logits, hidden_states=normed if batch.capture_hidden else None)
