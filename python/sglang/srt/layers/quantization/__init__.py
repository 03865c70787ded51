"""Quantized weights: GGUF block formats (Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K) and their CPU kernels.

See ``kernels`` for the torch ops (``torch.ops.sglang.quant_matmul`` and friends).
"""

from sglang.srt.layers.quantization.kernels import (
    FORMATS,
    QuantFormatInfo,
    dequantize,
    format_info,
    quant_matmul,
    quantize_q8_0,
    row_bytes,
)

__all__ = [
    "FORMATS",
    "QuantFormatInfo",
    "dequantize",
    "format_info",
    "quant_matmul",
    "quantize_q8_0",
    "row_bytes",
]
