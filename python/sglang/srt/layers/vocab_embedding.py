"""The token embedding table, which a tied model also uses as its LM head.

``forward(ids)`` looks rows up; ``project(hidden)`` is the LM-head matmul ``hidden @ table^T``.
The table may be kept quantized (a GGUF embedding in Q8_0 or another block format): a lookup
then dequantizes only the looked-up rows and the projection runs on the quantized blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers.linear import linear
from sglang.srt.layers.quantization import kernels
from sglang.srt.layers.quantization.weights import QuantizedTensor


class VocabEmbedding(nn.Module):
    """Parameter ``weight`` [vocab, hidden] (HF name ``embed_tokens.weight``)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(
            torch.empty(num_embeddings, embedding_dim, dtype=dtype, device=device)
        )
        self.quant: QuantizedTensor | None = None

    def load_quantized(self, tensor: QuantizedTensor) -> None:
        """Keep the table in its blocks (frees the dense parameter)."""
        if tensor.shape != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"shape mismatch: checkpoint {tensor.shape}, parameter {tuple(self.weight.shape)}"
            )
        self.quant = tensor
        self.weight = nn.Parameter(torch.empty(0, dtype=self.weight.dtype), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:
            return self.quant.rows(ids).to(self.weight.dtype)
        return F.embedding(ids, self.weight)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ table^T`` [rows, vocab] (the tied LM head), in hidden's dtype."""
        if self.quant is not None:
            return kernels.quant_matmul(hidden, self.quant.data, self.quant.fmt, self.embedding_dim)
        return linear(hidden, self.weight)

    def dense_weight(self) -> torch.Tensor:
        if self.quant is not None:
            return self.quant.dequantize().to(self.weight.dtype)
        return self.weight.data

    def extra_repr(self) -> str:
        quant = (
            f", quant={kernels.format_info(self.quant.fmt).name}" if self.quant is not None else ""
        )
        return f"{self.num_embeddings}, {self.embedding_dim}{quant}"
