"""The token embedding table, which a tied model also uses as its LM head.

``forward(ids)`` looks rows up; ``project(hidden)`` is the LM-head matmul ``hidden @ table^T``.
The table may be kept quantized (a GGUF embedding in Q8_0 or another block format): a lookup
then dequantizes only the looked-up rows and the projection runs on the quantized blocks.

``VocabParallelEmbedding`` is the tensor-parallel table: each rank holds a slice of the
vocabulary (a lookup outside it gives zeros, then the ranks' rows are summed) and, as a tied LM
head, projects onto its slice and all-gathers the full logits. With one rank it is the plain
table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.distributed.parallel_state import get_tp_group
from sglang.srt.layers.linear import linear
from sglang.srt.layers.parallel_linear import dense_only, take
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


class VocabParallelEmbedding(VocabEmbedding):
    """The table of a tensor-parallel model: rank r holds rows ``[vocab_start, vocab_start +
    num_embeddings)`` of the ``vocab_size`` rows (``num_embeddings = ceil(vocab_size / size)``,
    the last rank's tail zero padding). The checkpoint's full table is sliced by
    ``checkpoint_slice``. Lookups and projections return full results on every rank."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        tp = get_tp_group()
        rows = -(-num_embeddings // tp.size)
        super().__init__(rows, embedding_dim, dtype=dtype, device=device)
        self.tp = tp
        self.vocab_size = num_embeddings
        self.vocab_start = tp.rank * rows

    def checkpoint_slice(self, param: nn.Parameter, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the full [vocab, hidden] checkpoint table."""
        if self.tp.size == 1:
            return tensor
        return take(dense_only(tensor, self.tp), 0, self.vocab_start, self.num_embeddings)

    def load_quantized(self, tensor: QuantizedTensor) -> None:
        if self.tp.size > 1:
            dense_only(tensor, self.tp)  # raises: quantized tables are not split
        super().load_quantized(tensor)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(ids)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return self.tp.all_reduce(out)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().project(hidden)
        if self.tp.size == 1:
            return logits
        logits = self.tp.all_gather(logits, dim=-1)
        if logits.shape[-1] != self.vocab_size:  # the last rank's padding rows
            logits = logits[..., : self.vocab_size].contiguous()
        return logits

    def extra_repr(self) -> str:
        tp = f", vocab={self.vocab_size} from {self.vocab_start}" if self.tp.size > 1 else ""
        return super().extra_repr() + tp
