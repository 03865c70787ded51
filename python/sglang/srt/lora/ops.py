"""The LoRA delta of a batch whose rows use different adapters (S-LoRA / Punica style).

``lora_delta(x, row_slots, A, B, scaling)``: row t of ``x`` [T, in] uses the adapter in slot
``row_slots[t]`` (-1: the base model, no delta); returns [T, out] with row t =
``scaling[s] * B[s] (A[s] x_t)``. Rows are grouped by slot once (a stable sort), then each slot's
segment is two dense matmuls: a loop over the distinct adapters of the batch (at most
``--max-loras-per-batch``), never over requests or tokens. This is the reference; the C++ and
GPU kernels of the issue replace the segment loop.
"""

from __future__ import annotations

import torch


def lora_delta(x: torch.Tensor, row_slots: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               scaling: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``A`` [slots, rank, in], ``B`` [slots, out, rank], ``scaling`` [slots]."""
    out = torch.zeros(x.shape[0], B.shape[1], dtype=x.dtype, device=x.device)
    if x.shape[0] == 0:
        return out
    order = torch.argsort(row_slots, stable=True)
    slots, counts = torch.unique_consecutive(row_slots[order], return_counts=True)
    start = 0
    for slot, count in zip(slots.tolist(), counts.tolist()):
        rows = order[start:start + count]
        start += count
        if slot < 0:
            continue
        shrunk = x[rows] @ A[slot].T  # [n, rank]
        out[rows] = (shrunk @ B[slot].T) * scaling[slot]
    return out

