"""Weights kept quantized in GGUF blocks, and the matmuls of the layers that hold them.

A ``QuantizedTensor`` is one checkpoint matrix [rows, cols] stored as ``rows`` rows of ggml blocks
(uint8 [rows, row_bytes]): what the GGUF loader yields for the formats the CPU kernels multiply
directly (``kernels.FORMATS``), and what ``--quantization w8a16`` makes from a float checkpoint
(Q8_0: int8 with one fp16 scale per 32 weights). Rows are independent, so a fused projection
(q/k/v, gate/up) stacks its shards' rows, and llama.cpp's Q/K row permutation is undone on rows.

``QuantWeight`` is what a layer multiplies with: one or more row ranges ("parts"), each quantized
(any format) or dense; the output columns of part i are ``x @ part_i^T``. A fused layer whose
shards share one format becomes a single part (one kernel call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sglang import _core
from sglang.srt.layers.quantization import kernels


@dataclass(frozen=True)
class QuantizedTensor:
    """``data``: uint8 [rows, row_bytes] of ``fmt`` (ggml type id) blocks; ``shape``: (rows, cols)."""

    data: torch.Tensor
    fmt: int
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if self.data.dtype != torch.uint8 or self.data.dim() != 2:
            raise ValueError(f"quantized data must be a 2-D uint8 tensor, got {self.data.shape}")
        expected = (rows, kernels.row_bytes(self.fmt, cols))
        if tuple(self.data.shape) != expected:
            raise ValueError(
                f"quantized data of a {rows}x{cols} {kernels.format_info(self.fmt).name} matrix must "
                f"be {expected}, got {tuple(self.data.shape)}"
            )

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols]."""
        return kernels.dequantize(self.data, self.fmt, self.shape[1])

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 rows ``index`` (an embedding lookup): only those rows are dequantized."""
        return kernels.dequantize(self.data.index_select(0, index), self.fmt, self.shape[1])

    @property
    def nbytes(self) -> int:
        return self.data.numel()


@dataclass
class WeightPart:
    """Output rows ``offset .. offset + rows`` of a layer: quantized blocks or a dense matrix."""

    offset: int
    rows: int
    quant: QuantizedTensor | None
    dense: torch.Tensor | None


class QuantWeight:
    """The weight of a Linear whose rows are (at least partly) kept quantized."""

    def __init__(self, parts: list[WeightPart], in_features: int, dtype: torch.dtype) -> None:
        self.parts = _merge(parts)
        self.in_features = in_features
        self.out_features = sum(p.rows for p in self.parts)
        self.dtype = dtype  # the activations' dtype (inputs and outputs)

    @property
    def formats(self) -> list[str]:
        return [kernels.format_info(p.quant.fmt).name if p.quant else "dense" for p in self.parts]

    @property
    def nbytes(self) -> int:
        return sum(
            p.quant.nbytes if p.quant else p.dense.numel() * p.dense.element_size()  # type: ignore[union-attr]
            for p in self.parts
        )

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W^T + bias`` for x [..., in_features], in x's dtype."""
        if (
            len(self.parts) == 1
            and x.dim() == 2
            and x.dtype == torch.float32
            and not torch.compiler.is_compiling()  # traced: the registered op instead
        ):
            out = self._gemv(x)
            if out is not None:
                return out if bias is None else out.add_(bias)
        outs = []
        for p in self.parts:
            if p.quant is not None:
                outs.append(kernels.quant_matmul(x, p.quant.data, p.quant.fmt, self.in_features))
            else:
                outs.append(F.linear(x, p.dense.to(x.dtype)))  # type: ignore[union-attr]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return out if bias is None else out.add_(bias)

    def _gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        """The decode case straight to the kernel (the weight was checked when it was loaded, so
        only x is): float32 [rows, in] with unit column stride and few rows; else None."""
        q = self.parts[0].quant
        rows = x.shape[0]
        if (
            q is None
            or x.shape[1] != self.in_features
            or x.stride(1) != 1
            or x.device.type != "cpu"
        ):
            return None
        if rows > 1 and (rows > 4 * _core.quant_matmul_rows_per_pass() or x.stride(0) < x.shape[1]):
            return None
        out = torch.empty((rows, self.out_features), dtype=torch.float32)
        _core.quant_matmul_cpu(
            q.fmt, q.data.data_ptr(), self.out_features, self.in_features, x.data_ptr(),
            rows, x.stride(0), 0, out.data_ptr(), self.out_features,
        )  # fmt: skip
        return out

    def dequantize(self) -> torch.Tensor:
        """float32 [out_features, in_features]."""
        rows = [p.quant.dequantize() if p.quant else p.dense.float() for p in self.parts]  # type: ignore[union-attr]
        return torch.cat(rows) if len(rows) > 1 else rows[0]


def _merge(parts: list[WeightPart]) -> list[WeightPart]:
    """Adjacent quantized parts of one format become one part (one kernel call)."""
    parts = sorted(parts, key=lambda p: p.offset)
    merged: list[WeightPart] = []
    for p in parts:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.quant is not None
            and p.quant is not None
            and last.quant.fmt == p.quant.fmt
            and last.offset + last.rows == p.offset
        ):
            data = torch.cat([last.quant.data, p.quant.data])
            cols = last.quant.shape[1]
            q = QuantizedTensor(data, last.quant.fmt, (last.rows + p.rows, cols))
            merged[-1] = WeightPart(last.offset, last.rows + p.rows, q, None)
        else:
            merged.append(p)
    return merged


def quantize_w8a16(weight: torch.Tensor) -> QuantizedTensor | None:
    """Q8_0 blocks of a float [rows, cols] weight; None when cols is not a multiple of 32."""
    rows, cols = weight.shape
    q8 = kernels.format_info("Q8_0")
    if cols % q8.block_size:
        return None
    data = kernels.quantize_q8_0(weight.detach().float().contiguous())
    return QuantizedTensor(data, q8.type_id, (rows, cols))
