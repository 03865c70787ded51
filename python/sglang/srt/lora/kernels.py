"""Segmented multi-LoRA (S-LoRA / Punica style): ``lora_apply_`` adds the LoRA deltas of a batch
whose rows use different adapters into a base projection's output, in place.

Where the data comes from: the slot pool (``pool.py``) holds each target module's stacked
weights ``A`` [slots, max_rank, in] and ``B`` [slots, out, max_rank] (one layer's view of
``pool.A[target]`` / ``pool.B[target]``), ``ranks`` (int32) and ``scaling`` (float32) per slot;
the step's segments (``LoraManager.begin``) are ``seg_indptr`` (int32 [G + 1]: 0, then each
segment's end row) and ``seg_slots`` (int32 [G]: a slot, or -1 for base-model rows). Where it
goes: ``y`` is the projection's output (often a column slice of the fused qkv / gate_up output),
updated as ``y[r] += scaling[s] * B[s][:, :k] @ (A[s][:k] @ x[r])`` with k = ranks[s] for the
rows r of each segment with slot s >= 0 (float32 accumulation, y rounded once to its dtype).
The contract is ``csrc/include/sglang/kernels/lora.h``.

One function, three paths, chosen from x's device on every call:

* CPU: ``sglang._core.lora_apply`` (C++, ``csrc/kernels/lora_cpu.cc``), which checks the
  segment contents (slots, ranks, indptr) and raises ``sglang.CoreError`` before writing;
* CUDA with Triton: ``triton_lora.lora_apply_`` (a shrink and an expand launch, segment arrays
  read on the GPU, no host sync; contents are clamped there, not reported);
* anything else (CUDA without Triton): ``lora_apply_reference_``, pure torch.

Shapes, dtypes, devices and layouts are checked here for every path (``ValueError``).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from sglang import _core

__all__ = ["lora_apply_", "lora_apply_reference_"]

_CODES = {torch.float32: _core.DTYPE_FLOAT32, torch.bfloat16: _core.DTYPE_BFLOAT16}
_I32, _F32 = torch.int32, torch.float32


def lora_apply_(x: torch.Tensor, y: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                ranks: torch.Tensor, scaling: torch.Tensor, seg_indptr: torch.Tensor,
                seg_slots: torch.Tensor) -> None:  # fmt: skip
    """In place: adds each adapter segment's LoRA delta into ``y``.

    ``x`` [rows, in] and ``y`` [rows, out]: 2-D with unit column stride, any row stride (y must
    not overlap x); ``A`` [slots, max_rank, in], ``B`` [slots, out, max_rank] contiguous, of x's
    dtype (float32 or bfloat16); ``ranks`` int32 [slots] in [0, max_rank]; ``scaling`` float32
    [slots]; ``seg_indptr`` int32 [G + 1] (0, non-decreasing, ends at rows); ``seg_slots`` int32
    [G] in [-1, slots). All on x's device; nothing is synchronised or allocated on the CPU path.
    """
    # The checks are one expression over the cheapest tensor attributes (this runs ~200 times
    # per decode step); _explain says what is wrong only when it fails.
    dtype, xs, ys, As = x.dtype, x.shape, y.shape, A.shape
    x_strides, y_strides = x.stride(), y.stride()
    num_segments = seg_slots.numel()
    if not (
        len(xs) == 2 and len(ys) == 2 and len(As) == 3 and dtype in _CODES
        and y.dtype is dtype and A.dtype is dtype and B.dtype is dtype and ranks.dtype is _I32
        and scaling.dtype is _F32 and seg_indptr.dtype is _I32 and seg_slots.dtype is _I32
        and ys[0] == xs[0] and As[2] == xs[1] and B.shape == (As[0], ys[1], As[1])
        and ranks.numel() == As[0] and scaling.numel() == As[0]
        and seg_indptr.numel() == num_segments + 1
        and (x_strides[1] == 1 or xs[1] == 1) and (y_strides[1] == 1 or ys[1] == 1)
        and A.is_contiguous() and B.is_contiguous() and ranks.is_contiguous()
        and scaling.is_contiguous() and seg_indptr.is_contiguous() and seg_slots.is_contiguous()
    ):  # fmt: skip
        _explain(x, y, A, B, ranks, scaling, seg_indptr, seg_slots)
    if x.is_cpu:
        if not (y.is_cpu and A.is_cpu and B.is_cpu and ranks.is_cpu and scaling.is_cpu
                and seg_indptr.is_cpu and seg_slots.is_cpu):  # fmt: skip
            _explain_devices(x, y, A, B, ranks, scaling, seg_indptr, seg_slots)
        _core.lora_apply(
            x.data_ptr(), y.data_ptr(), _CODES[dtype], xs[0], xs[1], x_strides[0], ys[1],
            y_strides[0], A.data_ptr(), B.data_ptr(), As[1], ranks.data_ptr(), scaling.data_ptr(),
            As[0], seg_indptr.data_ptr(), seg_slots.data_ptr(), num_segments,
        )  # fmt: skip
        return
    device = x.device
    if not (y.device == device and A.device == device and B.device == device
            and ranks.device == device and scaling.device == device
            and seg_indptr.device == device and seg_slots.device == device):  # fmt: skip
        _explain_devices(x, y, A, B, ranks, scaling, seg_indptr, seg_slots)
    triton_lora = _triton_lora() if x.is_cuda else None
    if triton_lora is not None:
        triton_lora.lora_apply_(x, y, A, B, ranks, scaling, seg_indptr, seg_slots)
    else:
        lora_apply_reference_(x, y, A, B, ranks, scaling, seg_indptr, seg_slots)


def lora_apply_reference_(x: torch.Tensor, y: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          ranks: torch.Tensor, scaling: torch.Tensor, seg_indptr: torch.Tensor,
                          seg_slots: torch.Tensor) -> None:  # fmt: skip
    """The same update in plain torch: per distinct slot of the batch, its rows gathered and two
    float32 matmuls, y rounded once. Reads the segment arrays on the host (a sync on a GPU);
    arguments as ``lora_apply_`` (not checked here). The tests' reference and the fallback."""
    bounds = seg_indptr.tolist()
    spans: dict[int, list[tuple[int, int]]] = {}
    for g, slot in enumerate(seg_slots.tolist()):
        if slot >= 0 and bounds[g + 1] > bounds[g]:
            spans.setdefault(slot, []).append((bounds[g], bounds[g + 1]))
    rank_of, scale_of = ranks.tolist(), scaling.tolist()
    for slot, parts in spans.items():
        k = rank_of[slot]
        if k == 0:
            continue
        rows = torch.cat([torch.arange(lo, hi, device=x.device) for lo, hi in parts])
        shrunk = x[rows].float() @ A[slot, :k].float().T
        delta = (shrunk @ B[slot, :, :k].float().T) * scale_of[slot]
        y[rows] = (y[rows].float() + delta).to(y.dtype)


@functools.cache
def _triton_lora() -> ModuleType | None:
    """The Triton module, or None where triton does not import."""
    from sglang.srt.layers.triton_ops import available

    if not available():
        return None
    from sglang.srt.lora import triton_lora

    return triton_lora


def _explain(x: torch.Tensor, y: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             ranks: torch.Tensor, scaling: torch.Tensor, seg_indptr: torch.Tensor,
             seg_slots: torch.Tensor) -> None:  # fmt: skip
    """Raises ValueError naming the first shape, dtype or layout problem of the arguments."""

    def fail(msg: str) -> None:
        raise ValueError(f"lora_apply_: {msg}")

    if x.dim() != 2 or y.dim() != 2 or A.dim() != 3 or B.dim() != 3:
        fail(f"x, y must be 2-D and A, B 3-D, got {x.dim()}, {y.dim()}, {A.dim()}, {B.dim()}")
    if x.dtype not in _CODES or not x.dtype == y.dtype == A.dtype == B.dtype:
        fail(f"x, y, A, B must share float32 or bfloat16, got {x.dtype}, {y.dtype}, {A.dtype}, "
             f"{B.dtype}")  # fmt: skip
    for name, t, want in [("ranks", ranks, _I32), ("scaling", scaling, _F32),
                          ("seg_indptr", seg_indptr, _I32), ("seg_slots", seg_slots, _I32)]:  # fmt: skip
        if t.dtype != want or not t.is_contiguous():
            fail(f"{name} must be a contiguous {want} tensor, got {t.dtype} {tuple(t.shape)}")
    slots, max_rank, in_features = A.shape
    rows, out = x.shape[0], y.shape[1]
    if x.shape[1] != in_features or y.shape[0] != rows:
        fail(f"x {tuple(x.shape)}, y {tuple(y.shape)} and A {tuple(A.shape)} do not fit "
             "(x [rows, in], y [rows, out], A [slots, max_rank, in])")  # fmt: skip
    if B.shape != (slots, out, max_rank):
        fail(f"B must be [slots, out, max_rank] = {(slots, out, max_rank)}, got {tuple(B.shape)}")
    if ranks.numel() != slots or scaling.numel() != slots:
        fail(f"ranks and scaling must have one entry per slot ({slots})")
    if seg_indptr.numel() != seg_slots.numel() + 1:
        fail(f"seg_indptr must have one more entry than seg_slots, got {seg_indptr.numel()} "
             f"and {seg_slots.numel()}")  # fmt: skip
    if (x.stride(1) != 1 and x.shape[1] > 1) or (y.stride(1) != 1 and out > 1):
        fail(f"x and y need unit column strides, got {x.stride()} and {y.stride()}")
    if not (A.is_contiguous() and B.is_contiguous()):
        fail("A and B must be contiguous")
    fail("invalid arguments")  # unreachable while the checks above mirror lora_apply_'s


def _explain_devices(*tensors: torch.Tensor) -> None:
    names = ("x", "y", "A", "B", "ranks", "scaling", "seg_indptr", "seg_slots")
    devices = ", ".join(f"{n} {t.device}" for n, t in zip(names, tensors))
    raise ValueError(f"lora_apply_: every tensor must be on x's device, got {devices}")
