"""This tensor-parallel rank's part of a LoRA adapter (SGLang / vLLM / Punica layout).

Adapters arrive full from ``adapter.py`` (``A`` [rank, in], ``B`` [out, rank] per target); each
rank keeps the part that matches its shard of the base projection, so its hook computes exactly
its slice of the delta ``scaling * B (A x)``:

* a column-parallel target (q/k/v inside ``QKVParallelLinear``, gate/up inside the fused
  ``ColumnParallelLinear``) keeps ``A`` whole and the rows of ``B`` that the layer keeps of its
  weight, per fused shard (``checkpoint_rows``; with fewer KV heads than ranks, the rows of the
  KV head the rank shares);
* a row-parallel target (o_proj, down_proj) keeps the columns of ``A`` that the layer keeps of
  its weight (``checkpoint_cols``) and ``B`` whole: ``B (A_r x_r)`` is a partial delta that the
  layer adds to its partial output before the all-reduce, which sums the ranks' parts into
  ``B (A x)`` (the delta is linear in x; the bias stays rank 0's).

``target_shard(module, shard)`` reads this from the layer (any layer outside a TP group of more
than one rank keeps everything); ``TargetShard.split`` cuts one target's pair of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Rows = tuple[int, int]  # (start, size) along the split dimension of the full tensor


@dataclass(frozen=True)
class TargetShard:
    """Where one target's adapter weights of this rank lie in the full ones: ``in_cols`` of
    ``A`` (row-parallel) or ``out_rows`` of ``B`` (column-parallel); None: whole."""

    full_in: int
    full_out: int
    in_cols: Rows | None = None
    out_rows: Rows | None = None

    @property
    def full_shape(self) -> tuple[int, int]:
        return self.full_in, self.full_out

    @property
    def local_shape(self) -> tuple[int, int]:
        """(in, out) features of this rank's part: the pool's shape of the target."""
        return (self.full_in if self.in_cols is None else self.in_cols[1],
                self.full_out if self.out_rows is None else self.out_rows[1])  # fmt: skip

    def split(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (A [rank, in_r], B [out_r, rank]) of the full pair (copies when cut, so
        the full tensors can be freed)."""
        if self.in_cols is not None:
            a = a.narrow(1, *self.in_cols).clone()
        if self.out_rows is not None:
            b = b.narrow(0, *self.out_rows).clone()
        return a, b


def target_shard(module: nn.Module, shard: str | None) -> TargetShard:
    """The part of a target that this rank keeps, read from its projection ``module`` (one
    ``shard`` of a fused column-parallel layer, or None for a whole layer)."""
    from sglang.srt.layers.parallel_linear import ColumnParallelLinear, RowParallelLinear

    tp = getattr(module, "tp", None)
    if isinstance(module, RowParallelLinear) and tp is not None and tp.size > 1:
        return TargetShard(module.full_in_features, module.out_features,
                           in_cols=module.checkpoint_cols)  # fmt: skip
    if isinstance(module, ColumnParallelLinear) and tp is not None and tp.size > 1:
        start, size = module.checkpoint_rows[shard]
        full = module.full_shards[shard]
        if start + size > full:  # (only an LM head's vocabulary is padded: never a target)
            raise ValueError(f"rows {start}..{start + size} of '{shard}' run past its {full}")
        return TargetShard(module.in_features, full, out_rows=(start, size))
    out = module.out_features if shard is None else module.shard_offsets[shard][1]
    return TargetShard(module.in_features, out)
