"""The decoder layers of a CPU decode step in one C++ call (``_core.decode_layers_cpu``).

The model's layers run the fused CPU kernels one Python call per operation; for a small model's
decode step the Python between those calls costs as much as the kernels. When the model fits
what the C++ runner composes (Llama-style layers without q/k norms, every projection kept
quantized in one block format, float32 activations, the ``cpu`` attention backend) and the step
is a decode step (any batch size: the quantized kernel serves every row count), the model hands
its layers to ``FusedDecodeLayers.run``: the same kernels in the same order, so the
results are bit-identical. Everything else (prefill, larger batches, other models) runs in Python.

The pointer table of the weights and KV caches is built once and rebuilt when the KV pool or a
weight tensor changes (checked by identity, per step). A step with LoRA adapters passes the
adapter pool's pointers and the step's segments (``LoraStep.fused``): the C++ layers add the
deltas after each projection as the Python ``Linear`` hooks do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sglang import _core

if TYPE_CHECKING:
    from sglang.srt.model_executor.forward_batch import ForwardBatch

LAYER_COLUMNS = 24


def _matrix_columns(linear: Any) -> list[int] | None:
    """(fmt, data, n, k, bias) of a Linear kept quantized in one part, else None."""
    quant = getattr(linear, "quant", None)
    if quant is None or len(quant.parts) != 1 or quant.parts[0].quant is None:
        return None
    q = quant.parts[0].quant
    bias = linear.bias
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        return None
    return [q.fmt, q.data.data_ptr(), quant.out_features, quant.in_features,
            0 if bias is None else bias.data_ptr()]  # fmt: skip


class FusedDecodeLayers:
    """Runs a LlamaModel's layers for decode steps in C++; ``supported`` says whether it can."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = list(model.layers)
        self._table: np.ndarray | None = None
        self._key: tuple[Any, ...] | None = None
        self._scratch: dict[int, tuple[torch.Tensor, ...]] = {}
        self.supported = self._check()

    def _check(self) -> bool:
        if not self.layers:
            return False
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if not hasattr(mlp, "gate_up_proj"):  # a mixture-of-experts block: Python runs it
                return False
            if attn.q_norm is not None or not layer.input_layernorm.use_cpu_kernels:
                return False
            if layer.input_layernorm.weight.dtype != torch.float32:
                return False
            mats = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            if any(_matrix_columns(m) is None for m in mats):
                return False
        return True

    def accepts(self, batch: ForwardBatch) -> bool:
        return (
            self.supported
            and batch.is_decode
            and (batch.lora is None or batch.lora.fused is not None)
            and getattr(batch.attn_backend, "fuses_rope", False)
            and batch.kv_pool is not None
            and batch.kv_pool.dtype == torch.float32
        )

    def _layer_table(self, pool: Any) -> np.ndarray:
        key = (id(pool), pool.k[0].data_ptr(), *(id(m.quant) for m in self._linears()))
        if self._table is None or key != self._key:
            rows = []
            for i, layer in enumerate(self.layers):
                attn, mlp = layer.self_attn, layer.mlp
                row = [layer.input_layernorm.weight.data_ptr(),
                       layer.post_attention_layernorm.weight.data_ptr()]  # fmt: skip
                for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                    row += _matrix_columns(m)  # type: ignore[operator]
                row += [pool.k[i].data_ptr(), pool.v[i].data_ptr()]
                rows.append(row)
            self._table = np.asarray(rows, dtype=np.int64)
            self._key = key
        return self._table

    def _linears(self) -> list[Any]:
        return [
            m
            for layer in self.layers
            for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                      layer.mlp.gate_up_proj, layer.mlp.down_proj)
        ]  # fmt: skip

    def _buffers(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        bufs = self._scratch.get(batch_size)
        if bufs is None:
            attn = self.layers[0].self_attn
            inter = self.layers[0].mlp.down_proj.in_features
            qkv = attn.q_size + 2 * attn.kv_size
            shapes = (qkv, attn.q_size, 2 * inter, inter)
            bufs = tuple(torch.empty(batch_size, n, dtype=torch.float32) for n in shapes)
            self._scratch[batch_size] = bufs
        return bufs

    def run(
        self, batch: ForwardBatch, hidden: torch.Tensor, rotary: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [batch, hidden] float32 (the embeddings) -> (last layer output, residual)."""
        pool = batch.kv_pool
        attn = self.layers[0].self_attn
        hidden = hidden.contiguous()
        residual = torch.empty_like(hidden)
        meta = batch.attn_metadata
        table_ptr, table_rows, table_stride, rpi, seq_lens, bs = meta.paged
        positions, out_slots, _ = meta.rope
        dims = np.array(
            [hidden.shape[1], attn.num_heads, attn.num_kv_heads, attn.head_dim,
             self.layers[0].mlp.down_proj.in_features, pool.num_slots,
             rotary.cos_cache.data_ptr(), rotary.sin_cache.data_ptr(), rotary.cos_cache.shape[0]],
            dtype=np.int64,
        )  # fmt: skip
        consts = np.array([self.layers[0].input_layernorm.eps, attn.attn.scaling])
        step = np.array(
            [bs, positions, out_slots, table_ptr, table_rows, table_stride, rpi, seq_lens],
            dtype=np.int64,
        )
        scratch = np.array([b.data_ptr() for b in self._buffers(bs)], dtype=np.int64)
        lora = batch.lora.fused if batch.lora is not None else (None, None)
        _core.decode_layers_cpu(
            dims, consts, self._layer_table(pool), step, hidden.data_ptr(),
            residual.data_ptr(), False, scratch, *lora,
        )  # fmt: skip
        return hidden, residual
