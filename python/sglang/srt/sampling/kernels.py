"""Torch adapter of the fused logit-processing and sampling kernels.

The model runner's logits [num_rows, vocab] (fp32/fp16/bf16, last dim contiguous) are processed in
place, in this order: ``apply_penalties`` -> ``apply_token_ban`` -> ``apply_token_bitmask`` ->
``apply_logit_bias``, then ``sample`` draws one int32 token id per row. The per-row CSR arrays
(indptr / token_ids / counts / values) come from the scheduler core; the semantics are those of
``csrc/include/sglang/kernels/sampling.h``. This module only checks tensors and passes raw
pointers: CPU tensors go to ``sglang._core``, CUDA tensors to ``sglang._cuda`` (imported on first
CUDA use) on the current stream. Nothing here allocates besides ``sample``'s output.
"""

from __future__ import annotations

from types import ModuleType

import torch

__all__ = [
    "apply_logit_bias",
    "apply_penalties",
    "apply_token_ban",
    "apply_token_bitmask",
    "sample",
]

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_SEED_DTYPES = (torch.int64, torch.uint64) if hasattr(torch, "uint64") else (torch.int64,)
_cuda_module: ModuleType | None = None


def _core() -> ModuleType:
    from sglang import _core

    return _core


def _cuda() -> ModuleType:
    global _cuda_module
    if _cuda_module is None:
        try:
            from sglang import _cuda as module
        except ImportError as exc:
            raise RuntimeError(
                "CUDA tensors need sglang._cuda, but this sglang build has no CUDA kernels "
                "(rebuild with SGLANG_ENABLE_CUDA=ON and nvcc available)"
            ) from exc
        _cuda_module = module
    return _cuda_module


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _logits_args(logits: torch.Tensor, *, in_place: bool) -> tuple[int, int, int, int, int]:
    """(data_ptr, dtype code, num_rows, vocab, row_stride) of a checked logits tensor."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [num_rows, vocab], got shape {tuple(logits.shape)}")
    if logits.dtype not in _DTYPE_CODES:
        raise ValueError(f"logits dtype must be float32, float16 or bfloat16, got {logits.dtype}")
    rows, vocab = logits.shape
    if vocab == 0:
        raise ValueError("logits must have a non-empty vocab dimension")
    if vocab > 1 and logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocab dimension (stride(1) == 1)")
    stride = logits.stride(0)
    if in_place and rows > 1 and stride < vocab:
        raise ValueError("logits rows must not overlap (stride(0) >= vocab) for in-place updates")
    if stride < 0:
        raise ValueError("logits must have a non-negative row stride")
    return logits.data_ptr(), _DTYPE_CODES[logits.dtype], rows, vocab, stride


def _check_vector(
    t: torch.Tensor | None,
    name: str,
    dtypes: tuple[torch.dtype, ...],
    device: torch.device,
    length: int | None,
) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise ValueError(f"{name} must have dtype {names}, got {t.dtype}")
    if t.dim() != 1 or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous 1-D tensor, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but logits are on {device}")
    if length is not None and t.numel() != length:
        raise ValueError(f"{name} must have {length} elements, got {t.numel()}")


def _check_csr(
    logits: torch.Tensor,
    indptr: torch.Tensor,
    token_ids: torch.Tensor,
    parallel: dict[str, tuple[torch.Tensor | None, torch.dtype]],
) -> None:
    """Checks a per-row CSR list and the arrays parallel to token_ids."""
    _check_vector(indptr, "indptr", (torch.int32,), logits.device, logits.shape[0] + 1)
    _check_vector(token_ids, "token_ids", (torch.int32,), logits.device, None)
    for name, (t, dtype) in parallel.items():
        _check_vector(t, name, (dtype,), logits.device, token_ids.numel())
    # The core cannot see the array lengths. (On CUDA this would need a device sync, so there it
    # is the caller's promise.)
    if logits.device.type == "cpu" and int(indptr[-1]) > token_ids.numel():
        raise ValueError(f"indptr[-1] = {int(indptr[-1])} exceeds the {token_ids.numel()} entries")


def _run(logits: torch.Tensor, name: str, *args: int, num_threads: int | None = None) -> None:
    """Calls ``{name}_cpu`` (with num_threads when given) or ``{name}_cuda`` (with the stream)."""
    if logits.device.type == "cpu":
        fn = getattr(_core(), f"{name}_cpu")
        if num_threads is None:
            fn(*args)
        else:
            fn(*args, num_threads)
    elif logits.device.type == "cuda":
        cuda = _cuda()
        with torch.cuda.device(logits.device):
            status = getattr(cuda, f"{name}_cuda")(
                *args, torch.cuda.current_stream(logits.device).cuda_stream)
        if status != 0:  # sglang._cuda returns its Status rather than throwing
            raise _core().CoreError(f"{name}_cuda: {cuda.status_string(status)}")
    else:
        raise ValueError(f"logits must be on a CPU or CUDA device, got {logits.device}")


def apply_penalties(
    logits: torch.Tensor,
    indptr: torch.Tensor,
    token_ids: torch.Tensor,
    counts: torch.Tensor,
    frequency: torch.Tensor | None = None,
    presence: torch.Tensor | None = None,
    repetition: torch.Tensor | None = None,
    *,
    num_threads: int = 0,
) -> None:
    """In place: ``logit[t] -= frequency * count + presence`` for entries with count > 0, then
    the repetition penalty (divide positive logits, multiply the others) on every entry.

    Row r's entries are ``token_ids[indptr[r]:indptr[r + 1]]`` (int32, unique per row) with
    ``counts`` (int32 occurrences in the output so far). ``frequency`` / ``presence`` /
    ``repetition`` are float32 [num_rows] or None (0, 0, 1). ``num_threads``: CPU only.
    """
    rows = logits.shape[0] if logits.dim() == 2 else -1
    args = _logits_args(logits, in_place=True)
    _check_csr(logits, indptr, token_ids, {"counts": (counts, torch.int32)})
    for name, t in (("frequency", frequency), ("presence", presence), ("repetition", repetition)):
        _check_vector(t, name, (torch.float32,), logits.device, rows)
    if token_ids.numel() == 0:
        return  # no entries: nothing to change (an empty CUDA tensor has no data pointer)
    ptrs = (indptr, token_ids, counts, frequency, presence, repetition)
    _run(logits, "apply_penalties", *args, *(_ptr(t) for t in ptrs), num_threads=num_threads)


def apply_token_ban(logits: torch.Tensor, indptr: torch.Tensor, token_ids: torch.Tensor) -> None:
    """In place: sets row r's tokens ``token_ids[indptr[r]:indptr[r + 1]]`` to -inf."""
    args = _logits_args(logits, in_place=True)
    _check_csr(logits, indptr, token_ids, {})
    if token_ids.numel() == 0:
        return
    _run(logits, "apply_token_ban", *args, _ptr(indptr), _ptr(token_ids))


def apply_logit_bias(
    logits: torch.Tensor, indptr: torch.Tensor, token_ids: torch.Tensor, bias: torch.Tensor
) -> None:
    """In place: adds ``bias[i]`` (float32, parallel to token_ids) to row r's token
    ``token_ids[i]`` for i in ``indptr[r]:indptr[r + 1]``."""
    args = _logits_args(logits, in_place=True)
    if bias is None:
        raise ValueError("bias must be a float32 tensor parallel to token_ids")
    _check_csr(logits, indptr, token_ids, {"bias": (bias, torch.float32)})
    if token_ids.numel() == 0:
        return
    _run(logits, "apply_logit_bias", *args, _ptr(indptr), _ptr(token_ids), _ptr(bias))


def apply_token_bitmask(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    row_indices: torch.Tensor | None = None,
    *,
    num_threads: int = 0,
) -> None:
    """In place: sets tokens whose bit is 0 in xgrammar's int32 bitmask [mask_rows, words] to
    -inf. ``row_indices`` (int32 [num_rows], optional) maps logits rows to mask rows; a negative
    entry leaves the row unmasked. Tokens >= words * 32 are left unchanged."""
    args = _logits_args(logits, in_place=True)
    if not isinstance(bitmask, torch.Tensor):
        raise TypeError(f"bitmask must be a torch.Tensor, got {type(bitmask).__name__}")
    if bitmask.dtype != torch.int32:
        raise ValueError(f"bitmask must be int32 [mask_rows, words_per_row], got {bitmask.dtype}")
    if bitmask.dim() != 2 or not bitmask.is_contiguous():
        raise ValueError(f"bitmask must be contiguous 2-D, got shape {tuple(bitmask.shape)}")
    if bitmask.device != logits.device:
        raise ValueError(f"bitmask is on {bitmask.device} but logits are on {logits.device}")
    rows = logits.shape[0]
    _check_vector(row_indices, "row_indices", (torch.int32,), logits.device, rows)
    if row_indices is None and bitmask.shape[0] < rows:
        raise ValueError(f"bitmask has {bitmask.shape[0]} rows, logits have {rows}")
    # (On CUDA this would need a device sync, so there it is the caller's promise.)
    on_cpu = logits.device.type == "cpu"
    if row_indices is not None and on_cpu and rows > 0 and int(row_indices.max()) >= len(bitmask):
        raise ValueError("row_indices refers to a bitmask row that does not exist")
    _run(
        logits,
        "apply_token_bitmask",
        *args,
        bitmask.data_ptr(),
        bitmask.shape[1],
        _ptr(row_indices),
        num_threads=num_threads,
    )


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    num_threads: int = 0,
) -> torch.Tensor:
    """Draws one token id per row; returns int32 [num_rows] on the logits' device.

    Per row: ``temperature`` (float32; <= 0 means greedy), ``top_k`` (int32; <= 0 = all, 1 =
    greedy), ``top_p`` (float32; 1 = all), ``min_p`` (float32; 0 = all), ``seeds`` and ``offsets``
    (int64 or uint64; the draw is a pure function of (seed, offset)). top_k / top_p / min_p may be
    None (no filter). The logits are not modified; a row stride of 0 (``expand``) is allowed.
    """
    args = _logits_args(logits, in_place=False)
    rows, device = logits.shape[0], logits.device
    if top_k is None:
        top_k = torch.zeros(rows, dtype=torch.int32, device=device)
    if top_p is None:
        top_p = torch.ones(rows, dtype=torch.float32, device=device)
    if min_p is None:
        min_p = torch.zeros(rows, dtype=torch.float32, device=device)
    _check_vector(temperature, "temperature", (torch.float32,), device, rows)
    _check_vector(top_k, "top_k", (torch.int32,), device, rows)
    _check_vector(top_p, "top_p", (torch.float32,), device, rows)
    _check_vector(min_p, "min_p", (torch.float32,), device, rows)
    _check_vector(seeds, "seeds", _SEED_DTYPES, device, rows)
    _check_vector(offsets, "offsets", _SEED_DTYPES, device, rows)
    if out is None:
        out = torch.empty(rows, dtype=torch.int32, device=device)
    else:
        _check_vector(out, "out", (torch.int32,), device, rows)
    ptrs = (temperature, top_k, top_p, min_p, seeds, offsets, out)
    _run(logits, "sample", *args, *(_ptr(t) for t in ptrs), num_threads=num_threads)
    return out
