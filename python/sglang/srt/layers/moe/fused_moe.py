"""Grouped expert compute of a mixture-of-experts block, and ``FusedMoE``, the module holding the
experts' weights.

The experts' weights are stacked 3-D tensors: ``w13`` [E, 2 * I, H] (each expert's gate rows,
then its up rows, as transformers' fused ``gate_up_proj``) and ``w2`` [E, H, I] (``down_proj``).
They are filled per expert from the checkpoint's ``experts.<e>.{gate,up,down}_proj.weight``
tensors, or whole from fused ``experts.gate_up_proj`` / ``experts.down_proj`` tensors.

``fused_experts`` takes the hidden states [T, H] and the router's ``topk_weights`` / ``topk_ids``
[T, k] (``topk.select_experts``) and returns sum_j topk_weights[t, j] * expert_{ids[t, j]}(x_t),
[T, H] in the hidden states' dtype. The T * k (token, slot) rows are sorted by expert (a stable
argsort of the flattened ids, and per-expert counts) and the hidden states gathered in that
order, so each expert's rows are one contiguous slice; then either

* ``grouped``: one grouped matmul per projection over all experts (``F.grouped_mm`` with the
  counts' running sums as group ends; the default for dense weights), or
* ``loop``: a Python loop over the experts that got rows (one matmul per projection each), or
* ``gathered``: the selected experts' weights gathered per row (``w13[ids]``) and one batched
  matmul per projection; no sort, no host sync, but it copies T * k weight matrices (slower
  than ``grouped`` on CPU at every token count measured; kept for comparison).

The rows are put back in (token, slot) order and each token's k outputs summed with its weights
in one batched matmul. ``moe_forward_per_expert_loop`` is the reference: a loop over all E
experts as in transformers' eager implementation (the benchmark's baseline).

On CPU, ``FusedMoE.finalize_weights`` (after loading) reorders each expert's matrices once into
oneDNN's blocked layout (``PackedExperts``) when that runs an expert-shaped small-batch matmul
faster than ``F.linear`` on this CPU (measured once per process and weight shape on the model's
own experts: 1.5-3x per expert on an AMD EPYC, where MKL's small-M GEMM is slow); the dense
stacks are then freed and ``fused_experts_packed`` runs the loop over the experts with rows.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.distributed.parallel_state import divide, get_tp_group
from sglang.srt.layers import onednn
from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.linear import linear

logger = logging.getLogger(__name__)

METHODS = ("auto", "grouped", "loop", "gathered", "all_experts")
# Token counts at which ``all_experts`` is timed against the routed compute (at load, on the
# layer's own weights); it is used up to the largest count where it won (and all smaller ones).
ALL_EXPERTS_PROBES = (1, 4, 16, 64)
# Experts larger than this together are never all run per step (reading every expert each step
# cannot beat reading the routed ones once they no longer fit the caches; not timed, so a large
# model's load is not slowed by the probe).
ALL_EXPERTS_MAX_BYTES = 32 << 20
Activation = Callable[[torch.Tensor], torch.Tensor]
ExpertFn = Callable[[int, torch.Tensor], torch.Tensor]  # (expert, its rows [c, H]) -> [c, H]


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def _check(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
           topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> None:  # fmt: skip
    e, two_i, h = w13.shape
    if hidden.dim() != 2 or hidden.shape[1] != h or tuple(w2.shape) != (e, h, two_i // 2):
        raise ValueError(
            f"fused_experts: hidden {tuple(hidden.shape)}, w13 {tuple(w13.shape)}, "
            f"w2 {tuple(w2.shape)} do not fit ([T, H], [E, 2I, H], [E, H, I])"
        )
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"fused_experts: topk_ids {tuple(topk_ids.shape)} and topk_weights "
            f"{tuple(topk_weights.shape)} must both be [T, k] for T = {hidden.shape[0]}"
        )


def _grouped_mm_fits(x: torch.Tensor) -> bool:
    """Where ``F.grouped_mm`` runs: any float dtype on CPU; bfloat16 on CUDA."""
    if not hasattr(F, "grouped_mm"):
        return False
    return x.device.type == "cpu" or (x.is_cuda and x.dtype == torch.bfloat16)


def fused_experts(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: Activation = silu_and_mul,
    method: str = "auto",
) -> torch.Tensor:
    """The MoE output [T, H] (a new tensor); see the module docstring. ``activation`` maps
    [rows, 2I] to [rows, I]."""
    _check(hidden, w13, w2, topk_weights, topk_ids)
    if method not in METHODS:
        raise ValueError(f"fused_experts: method must be one of {METHODS}, got '{method}'")
    t, k = topk_ids.shape
    if t == 0:
        return hidden.new_zeros(hidden.shape)
    if method == "auto":  # the grouped matmul where it runs, else the loop
        method = "grouped" if _grouped_mm_fits(hidden) else "loop"
    if method == "gathered":
        y = _gathered(hidden, w13, w2, topk_ids, activation)
        return _combine(y, None, topk_weights, t, k)
    if method == "all_experts":
        return _all_experts(hidden, w13, w2, topk_weights, topk_ids, activation)
    order, counts, rows = _sort_rows(hidden, topk_ids, w13.shape[0])
    if method == "grouped":
        ends = torch.cumsum(counts, 0, dtype=torch.int32)
        gate_up = F.grouped_mm(rows, w13.transpose(1, 2), offs=ends)
        y = F.grouped_mm(activation(gate_up), w2.transpose(1, 2), offs=ends)
    else:

        def expert(e: int, x: torch.Tensor) -> torch.Tensor:
            return linear(activation(linear(x, w13[e])), w2[e])

        y = _loop(rows, counts.tolist(), expert)
    return _combine(y, order, topk_weights, t, k)


def fused_experts_packed(
    hidden: torch.Tensor,
    packed: PackedExperts,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: Activation = silu_and_mul,
) -> torch.Tensor:
    """``fused_experts`` with oneDNN-packed weights: the loop over the experts with rows."""
    t, k = topk_ids.shape
    if t == 0:
        return hidden.new_zeros(hidden.shape)
    order, counts, rows = _sort_rows(hidden, topk_ids, packed.num_experts)

    def expert(e: int, x: torch.Tensor) -> torch.Tensor:
        return packed.linear_w2(e, activation(packed.linear_w13(e, x)))

    return _combine(_loop(rows, counts.tolist(), expert), order, topk_weights, t, k)


def _sort_rows(hidden: torch.Tensor, topk_ids: torch.Tensor, num_experts: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(order, per-expert counts, the hidden rows [T * k, H] in expert order): row j of the
    sorted rows is (token, slot) ``order[j]`` of the flattened [T, k] ids."""
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    # scatter_add rather than bincount: no host sync on CUDA (bincount reads the max id)
    counts = flat.new_zeros(num_experts).scatter_add_(0, flat, torch.ones_like(flat))
    return order, counts, hidden.index_select(0, order // topk_ids.shape[1])


def _loop(rows: torch.Tensor, counts: list[int], expert: ExpertFn) -> torch.Tensor:
    """Rows sorted by expert -> each expert's output rows, one slice per expert that has rows."""
    y = rows.new_empty(rows.shape)
    start = 0
    for e, count in enumerate(counts):
        if count:
            end = start + count
            y[start:end] = expert(e, rows[start:end])
            start = end
    return y


def _gathered(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
              topk_ids: torch.Tensor, activation: Activation) -> torch.Tensor:  # fmt: skip
    """[T * k, H] in (token, slot) order, with each row's expert weights gathered."""
    k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    x = hidden.repeat_interleave(k, dim=0).unsqueeze(1)  # [T * k, 1, H]
    gate_up = torch.bmm(x, w13[flat].transpose(1, 2))
    return torch.bmm(activation(gate_up), w2[flat].transpose(1, 2)).squeeze(1)


def _all_experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                 topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                 activation: Activation) -> torch.Tensor:  # fmt: skip
    """Every expert on every token in one matmul per projection, the outputs weighted by the
    routing (zero for the experts not chosen): E / k times the FLOPs of the routed compute, but
    five ops and no sort, which wins for small experts and few tokens."""
    t, (e, two_i, h) = hidden.shape[0], w13.shape
    gate_up = F.linear(hidden, w13.reshape(e * two_i, h))  # [T, E * 2I]
    act = activation(gate_up.view(t * e, two_i)).view(t, e, -1)
    y = torch.bmm(act.transpose(0, 1), w2.transpose(1, 2))  # [E, T, H]
    dense = hidden.new_zeros(t, e).scatter_(1, topk_ids, topk_weights.to(hidden.dtype))
    return torch.bmm(dense.unsqueeze(1), y.transpose(0, 1)).squeeze(1)


def _combine(y: torch.Tensor, order: torch.Tensor | None, topk_weights: torch.Tensor,
             t: int, k: int) -> torch.Tensor:  # fmt: skip
    """Rows (sorted by ``order``, or already in (token, slot) order) -> each token's weighted
    sum of its k rows [T, H]."""
    if order is not None:
        y = torch.empty_like(y).index_copy_(0, order, y)
    weights = topk_weights.to(y.dtype).view(t, 1, k)
    return torch.bmm(weights, y.view(t, k, -1)).view(t, -1)


def moe_forward_per_expert_loop(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: Activation = silu_and_mul,
) -> torch.Tensor:
    """Reference: every expert in turn finds its tokens (``torch.where``) and runs on them,
    empty or not, as transformers' eager MoE did. Same result as ``fused_experts``."""
    _check(hidden, w13, w2, topk_weights, topk_ids)
    out = torch.zeros_like(hidden)
    for expert in range(w13.shape[0]):
        token, slot = torch.where(topk_ids == expert)
        y = F.linear(activation(F.linear(hidden[token], w13[expert])), w2[expert])
        out.index_add_(0, token, y * topk_weights[token, slot, None].to(y.dtype))
    return out


class PackedExperts:
    """Each expert's ``w13`` / ``w2`` reordered once into oneDNN's blocked layout (CPU, float32
    or bfloat16), for ``torch.ops.mkldnn._linear_pointwise``. Owns the packed copies; the
    dense stacks it was built from are not referenced."""

    ROWS_HINT = 16  # the batch size oneDNN lays the weights out for (measured: 1-64 rows fit)

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor) -> None:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        self.num_experts = w13.shape[0]
        self.w13 = [reorder(w13[e].contiguous(), self.ROWS_HINT) for e in range(self.num_experts)]
        self.w2 = [reorder(w2[e].contiguous(), self.ROWS_HINT) for e in range(self.num_experts)]

    def linear_w13(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        return onednn.linear(x, self.w13[expert], None)

    def linear_w2(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        return onednn.linear(x, self.w2[expert], None)

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacks back in plain layout (new tensors), e.g. to compare with a checkpoint."""
        return (torch.stack([w.to_dense() for w in self.w13]),
                torch.stack([w.to_dense() for w in self.w2]))  # fmt: skip


_PACKING_CHOICE: dict[tuple[object, ...], bool] = {}


def packing_wins(w13: torch.Tensor, w2: torch.Tensor, rows: int = 4, repeats: int = 3) -> bool:
    """Whether oneDNN's packed weights run a ``rows``-row expert (both projections) at least 10%
    faster than ``F.linear`` on this CPU, cycling through up to 16 of these experts so the
    weights come from memory as in a decode step. Measured once per dtype and shape (a few
    milliseconds); False where oneDNN cannot pack them (e.g. float16 without AVX512-FP16)."""
    key = (w13.dtype, tuple(w13.shape[1:]), torch.get_num_threads())
    if key not in _PACKING_CHOICE:
        _PACKING_CHOICE[key] = _can_pack(w13) and _measure_packing(w13, w2, rows, repeats)
    return _PACKING_CHOICE[key]


def _can_pack(w: torch.Tensor) -> bool:
    return (
        w.device.type == "cpu"
        and w.dtype in (torch.float32, torch.bfloat16)
        and onednn.available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def _measure_packing(w13: torch.Tensor, w2: torch.Tensor, rows: int, repeats: int) -> bool:
    n = min(w13.shape[0], 16)
    x = torch.randn(rows, w13.shape[2], generator=torch.Generator().manual_seed(0)).to(w13.dtype)

    def dense(e: int) -> torch.Tensor:
        return F.linear(silu_and_mul(F.linear(x, w13[e])), w2[e])

    try:
        with torch.inference_mode():
            packed = PackedExperts(w13[:n], w2[:n])

            def ours(e: int) -> torch.Tensor:
                return packed.linear_w2(e, silu_and_mul(packed.linear_w13(e, x)))

            packed_s, dense_s = _time_experts(n, ours, repeats), _time_experts(n, dense, repeats)
    except RuntimeError as exc:  # an op this build or CPU cannot run: stay dense
        logger.info("MoE experts: oneDNN packing unavailable (%s)", exc)
        return False
    wins = packed_s < 0.9 * dense_s
    logger.info("MoE experts %s: %s (oneDNN packed %.0f us, F.linear %.0f us per expert)",
                tuple(w13.shape), "oneDNN packed" if wins else "dense", packed_s * 1e6,
                dense_s * 1e6)  # fmt: skip
    return wins


_ALL_EXPERTS_CHOICE: dict[tuple[object, ...], int] = {}


def all_experts_max_tokens(w13: torch.Tensor, w2: torch.Tensor, top_k: int,
                           repeats: int = 3) -> int:  # fmt: skip
    """Up to how many tokens ``all_experts`` beats the routed default (``auto``) on this CPU
    (0: never): timed at ``ALL_EXPERTS_PROBES`` tokens with random top-``top_k`` routing until it
    first loses; once per dtype, shape, k and thread count."""
    key = (w13.device.type, w13.dtype, tuple(w13.shape), top_k, torch.get_num_threads())
    if key not in _ALL_EXPERTS_CHOICE:
        small = w13.nbytes + w2.nbytes <= ALL_EXPERTS_MAX_BYTES
        _ALL_EXPERTS_CHOICE[key] = (
            _measure_all_experts(w13, w2, top_k, repeats)
            if w13.device.type == "cpu" and small else 0)  # fmt: skip
    return _ALL_EXPERTS_CHOICE[key]


def _measure_all_experts(w13: torch.Tensor, w2: torch.Tensor, top_k: int, repeats: int) -> int:
    gen = torch.Generator().manual_seed(0)
    e, _, h = w13.shape
    best, times = 0, []
    with torch.inference_mode():
        for t in ALL_EXPERTS_PROBES:
            x = torch.randn(t, h, generator=gen).to(w13.dtype)
            logits = torch.randn(t, e, generator=gen)
            weights, ids = torch.topk(torch.softmax(logits, -1), min(top_k, e), dim=-1)
            routed, every = (
                _time_experts(1, functools.partial(_call_method, x, w13, w2, weights, ids, m),
                              repeats)
                for m in ("auto", "all_experts"))  # fmt: skip
            times.append(f"{t}: {every * 1e6:.0f} vs {routed * 1e6:.0f} us")
            if every >= routed:
                break
            best = t
    logger.info("MoE experts %s, top-%d: every expert on every token for steps of <= %d tokens "
                "(%s)", tuple(w13.shape), top_k, best, ", ".join(times))  # fmt: skip
    return best


def _call_method(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
                 ids: torch.Tensor, method: str, _: int) -> torch.Tensor:  # fmt: skip
    return fused_experts(x, w13, w2, weights, ids, method=method)


def _time_experts(n: int, fn: Callable[[int], torch.Tensor], repeats: int) -> float:
    """Best over ``repeats`` of the mean seconds per call of ``fn(e)`` for e in 0..n-1."""
    fn(0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for e in range(n):
            fn(e)
        best = min(best, (time.perf_counter() - start) / n)
    return best


class FusedMoE(nn.Module):
    """The experts of one MoE block: ``w13`` [E, 2I, H], ``w2`` [E, H, I] (uninitialized until
    loaded). ``forward(hidden, topk_weights, topk_ids)`` -> [T, H] (``fused_experts``)."""

    SHARDS = ("gate", "up", "down")

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        # Tensor parallelism: every rank holds every expert's 1/size slice of the intermediate
        # dimension (its gate, up rows and down columns); ``forward`` then returns this rank's
        # partial sum, which the MoE block all-reduces once (after adding its shared expert).
        self.tp = get_tp_group()
        i = divide(intermediate_size, self.tp.size, "the experts' intermediate size")
        self.intermediate_size = i
        self.inter_start = self.tp.rank * i  # this rank's slice of the checkpoint's I
        kw = {"dtype": dtype, "device": device}
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * i, hidden_size, **kw))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, i, **kw))
        self.act_fn = SiluAndMul()  # the fused C++ kernel once the ModelRunner enables it
        self.method = "auto"
        self.packed: PackedExperts | None = None  # set by finalize_weights (CPU, where it wins)
        # The router's k (set by the MoE block): finalize_weights measures with it whether small
        # steps should run every expert (``all_experts_max_tokens``).
        self.top_k: int | None = None
        self.all_experts_max_tokens = 0  # steps up to this size run every expert

    def forward(
        self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        if self.packed is not None:
            return fused_experts_packed(hidden, self.packed, topk_weights, topk_ids, self.act_fn)
        method = self.method
        if hidden.shape[0] <= self.all_experts_max_tokens:
            method = "all_experts"
        return fused_experts(hidden, self.w13, self.w2, topk_weights, topk_ids, self.act_fn,
                             method)  # fmt: skip

    def finalize_weights(self, quantization: str = "none", pack: bool | None = None) -> None:
        """After loading: on CPU, move the weights into ``PackedExperts`` where
        ``packing_wins`` (or as ``pack`` says) and free the dense stacks. The experts stay
        unquantized whatever ``quantization`` is."""
        if self.packed is not None or self.w13.device.type != "cpu":
            return
        if pack is None:
            pack = packing_wins(self.w13.data, self.w2.data)
        if pack:
            self.packed = PackedExperts(self.w13.data, self.w2.data)
            empty = torch.empty(0, dtype=self.w13.dtype)
            self.w13 = nn.Parameter(empty, requires_grad=False)
            self.w2 = nn.Parameter(empty.clone(), requires_grad=False)
        elif self.top_k is not None and self.method == "auto":
            self.all_experts_max_tokens = all_experts_max_tokens(self.w13.data, self.w2.data,
                                                                 self.top_k)  # fmt: skip

    def graph_safe(self) -> bool:
        """Whether ``forward`` runs without a host sync (CUDA graphs): the grouped matmul on
        CUDA bfloat16; the other CUDA dtypes loop over the experts on the host."""
        w = self.w13
        return w.device.type != "cuda" or (self.method == "auto" and _grouped_mm_fits(w))

    def dense_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13, w2) in plain layout, packed or not."""
        return self.packed.dense() if self.packed is not None else (self.w13.data, self.w2.data)

    def shard_names(self, param_name: str) -> list[str]:
        """What ``load_expert_weight`` records per parameter (``<expert>.<shard>``); a complete
        checkpoint fills all of them."""
        shards = ("gate", "up") if param_name == "w13" else ("down",)
        return [f"{e}.{s}" for e in range(self.num_experts) for s in shards]

    def load_expert_weight(self, expert_id: int, shard: str, tensor: torch.Tensor) -> str:
        """Copy one expert's ``gate`` / ``up`` [I, H] or ``down`` [H, I] checkpoint matrix into
        its rows of ``w13`` / ``w2``; returns the loaded name (``w13:<e>.gate`` ...)."""
        if shard not in self.SHARDS:
            raise ValueError(f"expert shard must be one of {self.SHARDS}, got '{shard}'")
        if not 0 <= expert_id < self.num_experts:
            raise ValueError(f"expert {expert_id} out of range (the block has {self.num_experts})")
        i = self.intermediate_size
        if shard == "down":
            param, target = "w2", self.w2.data[expert_id]
        else:
            offset = 0 if shard == "gate" else i
            param, target = "w13", self.w13.data[expert_id].narrow(0, offset, i)
        if self.tp.size > 1:  # this rank's rows of gate / up [I, H], columns of down [H, I]
            tensor = tensor.narrow(1 if shard == "down" else 0, self.inter_start, i)
        if target.shape != tensor.shape:
            raise ValueError(
                f"expert {expert_id} {shard}_proj: checkpoint shape {tuple(tensor.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        target.copy_(tensor)
        return f"{param}:{expert_id}.{shard}"

    def load_fused_weight(self, hf_param: str, tensor: torch.Tensor) -> list[str]:
        """Copy a stacked checkpoint tensor (transformers' ``gate_up_proj`` [E, 2I, H] or
        ``down_proj`` [E, H, I]); returns the loaded names (every expert's shards)."""
        params = {"gate_up_proj": "w13", "down_proj": "w2"}
        if hf_param not in params:
            raise ValueError(f"unknown stacked expert tensor '{hf_param}'")
        name = params[hf_param]
        param = getattr(self, name)
        if self.tp.size > 1:
            tensor = self._rank_slice(hf_param, tensor)
        if param.shape != tensor.shape:
            raise ValueError(
                f"experts.{hf_param}: checkpoint shape {tuple(tensor.shape)}, "
                f"expected {tuple(param.shape)}"
            )
        param.data.copy_(tensor)
        return [f"{name}:{s}" for s in self.shard_names(name)]

    def _rank_slice(self, hf_param: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of a stacked checkpoint tensor: its gate and up rows of
        ``gate_up_proj`` [E, 2I, H], its columns of ``down_proj`` [E, H, I]."""
        i, start = self.intermediate_size, self.inter_start
        if hf_param == "down_proj":
            return tensor.narrow(2, start, i)
        full = tensor.shape[1] // 2
        return torch.cat([tensor.narrow(1, start, i), tensor.narrow(1, full + start, i)], 1)

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, hidden={self.hidden_size}, "
            f"intermediate={self.intermediate_size}"
        )
