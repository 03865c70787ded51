"""Tensor-parallel variants of ``Linear``, sized from the TP group current at construction
(``distributed.parallel_state.get_tp_group``).

* ``ColumnParallelLinear``: each rank holds a slice of the output rows (of every fused shard:
  its gate rows and its up rows, ...); its output is this rank's slice of the features, no
  communication. ``QKVParallelLinear`` slices q by attention heads and k/v by KV heads (a head
  shared by several ranks when there are fewer KV heads than ranks).
* ``RowParallelLinear``: each rank holds a slice of the input columns and gets the matching
  slice of the features (a column-parallel layer's output); the partial products are summed
  over the ranks (``all_reduce``) unless ``reduce_results=False`` (the caller reduces once,
  e.g. after an MoE block's combine). The bias is added by rank 0 only, so it counts once.
* ``ParallelLMHead``: a column-parallel LM head whose vocabulary slices (ceil(vocab / size)
  rows each, the last padded with zero rows) are all-gathered into full logits.

Checkpoints stay full HF tensors: ``ShardedLinear.load_shard`` copies the part
``checkpoint_slice`` cuts out of them. With one rank every layer is a plain ``Linear`` with the
full weights (the row-parallel ``forward`` adds one Python branch, no collective, no copy).
Quantized weights (GGUF blocks, ``w8a16``) are not split: under TP they are an error. LoRA
adapters are split like the weights (``lora.sharding``): a row-parallel layer's hook adds this
rank's partial delta before the all-reduce.
"""

from __future__ import annotations

import torch
from torch import nn

from sglang.srt.distributed.parallel_state import (
    TPGroup,
    divide,
    get_tp_group,
    kv_head_range,
    split_heads,
)
from sglang.srt.layers.linear import Linear, linear
from sglang.srt.layers.quantization.weights import QuantizedTensor

Rows = tuple[int, int]  # (start, size) along the split dimension of the checkpoint tensor


def take(tensor: torch.Tensor, dim: int, start: int, size: int) -> torch.Tensor:
    """``size`` entries of ``tensor`` along ``dim`` from ``start`` (a view), zero-padded (a new
    tensor) where they run past its end."""
    have = max(0, min(size, tensor.shape[dim] - start))
    if have == size:
        return tensor.narrow(dim, start, size)
    pad = list(tensor.shape)
    pad[dim] = size - have
    return torch.cat([tensor.narrow(dim, min(start, tensor.shape[dim]), have),
                      tensor.new_zeros(pad)], dim)  # fmt: skip


def dense_only(tensor: torch.Tensor | QuantizedTensor, tp: TPGroup) -> torch.Tensor:
    """``tensor``, or the error a quantized one gets under TP (blocks are not split)."""
    if isinstance(tensor, QuantizedTensor):
        raise ValueError(  # noqa: TRY004 - a configuration error, reported as the others
            f"tensor parallelism (TP size {tp.size}) splits dense float weights only; "
            "quantized (GGUF block) weights are not supported: load with --quantization none"
        )
    return tensor


class ShardedLinear(Linear):
    """A ``Linear`` holding this TP rank's part of the checkpoint's matrix: ``load_shard`` takes
    the full checkpoint tensor and copies the part ``checkpoint_slice`` cuts out of it."""

    tp: TPGroup

    def checkpoint_slice(
        self, param: nn.Parameter, tensor: torch.Tensor | QuantizedTensor, shard: str | None = None
    ) -> torch.Tensor | QuantizedTensor:
        raise NotImplementedError

    def load_shard(
        self, param: nn.Parameter, shard: str | None, tensor: torch.Tensor | QuantizedTensor
    ) -> None:
        if self.tp.size > 1:
            tensor = self.checkpoint_slice(param, tensor, shard)
        super().load_shard(param, shard, tensor)


class ColumnParallelLinear(ShardedLinear):
    """``out_features`` and ``shards`` are the full (checkpoint) sizes; each rank holds
    ``checkpoint_rows[shard]`` of each, by default its even 1/size slice."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        shards: dict[str, int] | None = None,
        checkpoint_rows: dict[str | None, Rows] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        tp = get_tp_group()
        full: dict[str | None, int] = dict(shards) if shards else {None: out_features}
        if checkpoint_rows is None:
            checkpoint_rows = {}
            for name, n in full.items():
                size = divide(n, tp.size, f"the output features of '{name or 'linear'}'")
                checkpoint_rows[name] = (tp.rank * size, size)
        local = {name: size for name, (_, size) in checkpoint_rows.items()}
        local_shards = {str(k): v for k, v in local.items()} if shards else None
        super().__init__(in_features, sum(local.values()), bias, shards=local_shards,
                         dtype=dtype, device=device)  # fmt: skip
        self.tp = tp
        self.full_out_features = out_features
        self.full_shards = full  # each shard's full (checkpoint) rows
        self.checkpoint_rows = checkpoint_rows

    def checkpoint_slice(
        self, param: nn.Parameter, tensor: torch.Tensor | QuantizedTensor, shard: str | None = None
    ) -> torch.Tensor | QuantizedTensor:
        """This rank's rows of a full checkpoint weight [out, in] or bias [out] of ``shard``."""
        if self.tp.size == 1:
            return tensor
        start, size = self.checkpoint_rows[shard]
        return take(dense_only(tensor, self.tp), 0, start, size)


class QKVParallelLinear(ColumnParallelLinear):
    """The fused q/k/v projection: shards ``q``, ``k``, ``v``; this rank's ``num_heads`` q heads
    and ``num_kv_heads`` k and v heads (``parallel_state.split_heads``)."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        total_num_heads: int,
        total_num_kv_heads: int,
        bias: bool = False,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        tp = get_tp_group()
        heads, kv_heads = split_heads(total_num_heads, total_num_kv_heads, tp.size)
        first_kv, _ = kv_head_range(total_num_kv_heads, tp.rank, tp.size)
        q_rows = (tp.rank * heads * head_dim, heads * head_dim)
        kv_rows = (first_kv * head_dim, kv_heads * head_dim)
        total_q, total_kv = total_num_heads * head_dim, total_num_kv_heads * head_dim
        super().__init__(
            hidden_size,
            total_q + 2 * total_kv,
            bias,
            shards={"q": total_q, "k": total_kv, "v": total_kv},
            checkpoint_rows={"q": q_rows, "k": kv_rows, "v": kv_rows},
            dtype=dtype,
            device=device,
        )
        self.num_heads, self.num_kv_heads = heads, kv_heads


class RowParallelLinear(ShardedLinear):
    """``in_features`` is the full size; each rank holds its 1/size slice of the columns."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        reduce_results: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        tp = get_tp_group()
        size = divide(in_features, tp.size, "the input features of a row-parallel linear")
        super().__init__(size, out_features, bias, dtype=dtype, device=device)
        self.tp = tp
        self.full_in_features = in_features
        self.reduce_results = reduce_results
        self.checkpoint_cols: Rows = (tp.rank * size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(x)
        y = linear(x, self.weight, self.bias if self.tp.rank == 0 else None)
        if self.lora is not None:  # this rank's partial delta (its columns of A): summed below
            self.lora(x, y)
        return self.tp.all_reduce(y) if self.reduce_results else y

    def checkpoint_slice(
        self, param: nn.Parameter, tensor: torch.Tensor | QuantizedTensor, shard: str | None = None
    ) -> torch.Tensor | QuantizedTensor:
        """This rank's columns of a full checkpoint weight [out, in]; the bias whole."""
        if self.tp.size == 1 or param is self.bias:
            return tensor
        start, size = self.checkpoint_cols
        return dense_only(tensor, self.tp).narrow(1, start, size)


class ParallelLMHead(ColumnParallelLinear):
    """The untied LM head [vocab, hidden]: ``forward`` returns the full [rows, vocab] logits on
    every rank."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        tp = get_tp_group()
        rows = -(-vocab_size // tp.size)
        super().__init__(hidden_size, vocab_size, checkpoint_rows={None: (tp.rank * rows, rows)},
                         dtype=dtype, device=device)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.tp.size == 1:
            return y
        y = self.tp.all_gather(y, dim=-1)
        if y.shape[-1] != self.full_out_features:  # the last rank's padding rows
            y = y[..., : self.full_out_features].contiguous()
        return y
