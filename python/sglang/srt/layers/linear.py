"""A plain linear layer whose weights are allocated uninitialized (filled by the weight loader),
plus the shard bookkeeping for fused projections (q/k/v -> qkv_proj, gate/up -> gate_up_proj).

Weights arrive from ``model_loader`` as HF tensors ``[out, in]``; a fused layer copies each
checkpoint shard into its row range, so one matmul computes all of them. A shard may instead
arrive quantized (a GGUF tensor kept in its blocks, ``QuantizedTensor``): the layer then holds a
``QuantWeight`` (after ``finalize_weights``) and multiplies with the quantized-block kernels.

``linear`` is ``F.linear`` except for small float32 batches on CPU (decode steps), where
computing ``(W @ x^T)^T`` can let the BLAS stream the weight matrix as the large operand (a single
row as two identical rows). Whether that is faster depends on the CPU and its BLAS (2x faster on
an AMD EPYC, 3-4x slower on an Intel Xeon with AMX): ``calibrate_small_batch_gemm`` times both on
the model's own weight once at load time and keeps the faster one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers.quantization.weights import (
    QuantizedTensor,
    QuantWeight,
    WeightPart,
    quantize_w8a16,
)

logger = logging.getLogger(__name__)


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
        self.quant: QuantWeight | None = None
        self._quant_shards: dict[str | None, QuantizedTensor] = {}
        # Set by the LoRA manager (--enable-lora): ``lora(x, y)`` adds the adapters' deltas.
        self.lora: Callable[[torch.Tensor, torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant is not None:
            y = self.quant.matmul(x, self.bias)
        else:
            y = linear(x, self.weight, self.bias)
        if self.lora is not None:  # adds the step's LoRA deltas (rows with an adapter) into y
            self.lora(x, y)
        return y

    def load_shard(
        self, param: nn.Parameter, shard: str | None, tensor: torch.Tensor | QuantizedTensor
    ) -> None:
        """Copy a checkpoint tensor into ``param`` (weight or bias), or into one shard's rows;
        a quantized weight is kept (in its blocks) until ``finalize_weights``."""
        target = param.data
        if shard is not None:
            offset, size = self.shard_offsets[shard]
            target = target.narrow(0, offset, size)
        if isinstance(tensor, QuantizedTensor):
            if param is not self.weight:
                raise ValueError("only a weight matrix can be kept quantized")
            if tuple(target.shape) != tensor.shape:
                raise ValueError(
                    f"shape mismatch: checkpoint {tensor.shape}, parameter {tuple(target.shape)}"
                )
            self._quant_shards[shard] = tensor
            return
        if target.shape != tensor.shape:
            raise ValueError(
                f"shape mismatch: checkpoint {tuple(tensor.shape)}, parameter {tuple(target.shape)}"
            )
        target.copy_(tensor)

    def finalize_weights(self, quantization: str = "none") -> None:
        """After loading: build the QuantWeight from the quantized shards (dense shards stay rows
        of ``weight``), or quantize the dense weight (``w8a16``). Frees the dense weight when
        nothing dense is left."""
        parts: list[WeightPart] = []
        if quantization == "w8a16" and not self._quant_shards:
            q = quantize_w8a16(self.weight.data)
            if q is None:
                logger.warning(
                    "%s: in_features %d is not a multiple of 32; kept dense", self, self.in_features
                )
                return
            parts.append(WeightPart(0, self.out_features, q, None))
        else:
            if not self._quant_shards:
                return
            ranges = self.shard_offsets or {None: (0, self.out_features)}
            for shard, (offset, size) in ranges.items():
                q = self._quant_shards.get(shard)
                dense = None if q is not None else self.weight.data[offset : offset + size]
                parts.append(WeightPart(offset, size, q, dense))
        self._quant_shards = {}
        self.quant = QuantWeight(parts, self.in_features, self.weight.dtype)
        if all(p.quant is not None for p in self.quant.parts):
            self.weight = nn.Parameter(torch.empty(0, dtype=self.weight.dtype), requires_grad=False)

    def dense_weight(self) -> torch.Tensor:
        """[out, in] in the layer's dtype (dequantized when the weight is kept quantized)."""
        if self.quant is not None:
            return self.quant.dequantize().to(self.weight.dtype)
        return self.weight.data

    def extra_repr(self) -> str:
        quant = f", quant={'+'.join(self.quant.formats)}" if self.quant is not None else ""
        return (
            f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}{quant}"
        )


SMALL_BATCH_MAX_ROWS = 64
small_batch_gemm_enabled = False  # set by calibrate_small_batch_gemm (or by hand in benchmarks)


def best_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds of the fastest of ``repeats`` calls of ``fn()`` after one warm-up call (the
    load-time calibrations use it)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate_small_batch_gemm(weight: torch.Tensor, repeats: int = 5) -> bool:
    """Time ``F.linear`` against ``(W @ x^T)^T`` for 1 and 4 rows on ``weight`` (a float32 CPU
    matrix of the model) and enable the transposed form only when it wins both; returns the
    choice. A few milliseconds, once per model load."""
    global small_batch_gemm_enabled
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
        return small_batch_gemm_enabled
    gen = torch.Generator().manual_seed(0)
    wins = True
    with torch.inference_mode():
        for rows in (1, 4):
            x = torch.randn(rows, weight.shape[1], generator=gen)
            xs = torch.cat([x, x]) if rows == 1 else x
            plain = best_time(lambda x=x: F.linear(x, weight), repeats)
            transposed = best_time(lambda xs=xs: torch.mm(weight, xs.t()).t().contiguous(), repeats)
            wins = wins and transposed < 0.9 * plain
    small_batch_gemm_enabled = wins
    logger.info("small-batch fp32 GEMM as (W @ x^T)^T: %s", "on" if wins else "off")
    return wins


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
