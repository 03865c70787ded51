"""A plain linear layer whose weights are allocated uninitialized (filled by the weight loader),
plus the shard bookkeeping for fused projections (q/k/v -> qkv_proj, gate/up -> gate_up_proj).

Weights arrive from ``model_loader`` as HF tensors ``[out, in]``; a fused layer copies each
checkpoint shard into its row range, so one matmul computes all of them.

``linear`` is ``F.linear`` except for small float32 batches on CPU (decode steps), where
computing ``(W @ x^T)^T`` lets MKL stream the weight matrix as the large operand, which is up to
2-3x faster than ``x @ W^T`` for 2..64 rows; a single row is computed as two identical rows
(measured on the 2-core AVX2 dev machine, SmolLM2 decode: 41 vs 50 ms per step at batch 1,
42 vs 89 ms at batch 4, about equal at batch 32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """``y = x @ W^T + b`` with ``W: [out_features, in_features]``.

    ``shards`` names the checkpoint tensors stacked along the output dimension of a fused layer,
    with their sizes (e.g. ``{"q": 576, "k": 192, "v": 192}``); empty for an unfused layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        shards: dict[str, int] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in (shards or {}).items():
            self.shard_offsets[name] = (offset, size)
            offset += size
        if shards and offset != out_features:
            raise ValueError(f"shard sizes sum to {offset}, expected {out_features}")
        kw = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def load_shard(self, param: nn.Parameter, shard: str | None, tensor: torch.Tensor) -> None:
        """Copy a checkpoint tensor into ``param`` (weight or bias), or into one shard's rows."""
        target = param.data
        if shard is not None:
            offset, size = self.shard_offsets[shard]
            target = target.narrow(0, offset, size)
        if target.shape != tensor.shape:
            raise ValueError(
                f"shape mismatch: checkpoint {tuple(tensor.shape)}, parameter {tuple(target.shape)}"
            )
        target.copy_(tensor)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"


SMALL_BATCH_MAX_ROWS = 64
small_batch_gemm_enabled = True  # switch for benchmarks


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight^T + bias`` for x [rows, in]; same values as ``F.linear`` up to rounding."""
    rows = x.shape[0]
    if (
        not small_batch_gemm_enabled
        or x.dim() != 2
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or rows > SMALL_BATCH_MAX_ROWS
    ):
        return F.linear(x, weight, bias)
    # One row goes as two: MKL's matrix-vector path is slower than its two-column GEMM here.
    xs = torch.cat([x, x]) if rows == 1 else x
    out = torch.mm(weight, xs.t())[:, :rows].t().contiguous()
    return out if bias is None else out.add_(bias)
