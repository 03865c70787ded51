"""The segmented multi-LoRA kernels (``sglang.srt.lora.kernels.lora_apply_``): the C++ CPU kernel
against the pure-torch ``lora_apply_reference_`` and both against a plain per-row float64
computation, float32 and bfloat16, y a column slice of a wider output, base-model (-1) and empty
segments, ranks below max_rank (the weights past a slot's rank hold garbage that must not be
read), batches of zero rows and enough rows for the thread pool, argument errors; the Triton
kernels against the reference under Triton's interpreter (CPU tensors) and compiled on a GPU
(``gpu`` mark: no host sync, CUDA-graph replay with new segments)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from sglang import _core
from sglang.srt.layers.triton_ops import available as triton_available
from sglang.srt.layers.triton_ops import interpreting
from sglang.srt.lora.kernels import lora_apply_, lora_apply_reference_

DTYPES = [torch.float32, torch.bfloat16]
PAD_LEFT, PAD_RIGHT = 3, 5  # y is wide[:, PAD_LEFT:PAD_LEFT + out]


@dataclass
class Batch:
    x: torch.Tensor
    wide: torch.Tensor  # y's base tensor
    A: torch.Tensor
    B: torch.Tensor
    ranks: torch.Tensor
    scaling: torch.Tensor
    indptr: torch.Tensor
    slots: torch.Tensor

    @property
    def out(self) -> int:
        return self.B.shape[1]

    def y(self, wide: torch.Tensor | None = None) -> torch.Tensor:
        return (self.wide if wide is None else wide)[:, PAD_LEFT : PAD_LEFT + self.out]

    def args(self, wide: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.x, self.y(wide), self.A, self.B, self.ranks, self.scaling, self.indptr,
                self.slots)  # fmt: skip

    def to(self, device: str) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def make_batch(dtype: torch.dtype, in_features: int, out: int, max_rank: int, ranks: list[int],
               lengths: list[int], slots: list[int], seed: int = 0) -> Batch:  # fmt: skip
    """Segments of the given lengths and slots; x with a row stride wider than in_features."""
    gen = torch.Generator().manual_seed(seed)
    rows, num_slots = sum(lengths), len(ranks)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * scale).to(dtype)

    x = randn(rows, in_features + 4)[:, 1 : 1 + in_features]
    wide = randn(rows, PAD_LEFT + out + PAD_RIGHT)
    A = randn(num_slots, max_rank, in_features, scale=0.2)
    B = randn(num_slots, out, max_rank, scale=0.2)
    for s, k in enumerate(ranks):  # past the rank: large values the kernels must ignore
        A[s, k:] = 1e4
        B[s, :, k:] = 1e4
    indptr = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return Batch(x, wide, A, B, torch.tensor(ranks, dtype=torch.int32),
                 torch.linspace(0.5, 2.0, num_slots), indptr,
                 torch.tensor(slots, dtype=torch.int32))  # fmt: skip


def per_row_float64(b: Batch) -> torch.Tensor:
    """The expected wide tensor, row by row in float64."""
    expected = b.wide.double().clone()
    bounds = b.indptr.tolist()
    for g, s in enumerate(b.slots.tolist()):
        if s < 0:
            continue
        k = int(b.ranks[s])
        for r in range(bounds[g], bounds[g + 1]):
            t = b.A[s, :k].double() @ b.x[r].double()
            expected[r, PAD_LEFT : PAD_LEFT + b.out] += float(b.scaling[s]) * (
                b.B[s, :, :k].double() @ t
            )
    return expected


def adapted_rows(b: Batch) -> torch.Tensor:
    mask = torch.zeros(b.x.shape[0], dtype=torch.bool)
    bounds = b.indptr.tolist()
    for g, s in enumerate(b.slots.tolist()):
        mask[bounds[g] : bounds[g + 1]] = s >= 0
    return mask


def check_close(got: torch.Tensor, want: torch.Tensor, b: Batch) -> None:
    """got / want: wide tensors. Adapter rows within float32 rounding (float32) or one bf16 ulp
    (bf16: the sum is rounded once); every other element bit for bit equal to the input."""
    rows = adapted_rows(b)
    cols = slice(PAD_LEFT, PAD_LEFT + b.out)
    if b.wide.dtype == torch.float32:
        tol = {"atol": 1e-4, "rtol": 1e-5}
    else:
        tol = {"atol": 1e-5, "rtol": 2**-6}  # one bf16 ulp, two near a rounding boundary
    torch.testing.assert_close(got[rows][:, cols].double(), want[rows][:, cols].double(), **tol)
    untouched = torch.ones_like(b.wide, dtype=torch.bool)
    untouched[rows, cols] = False
    assert torch.equal(got[untouched.to(got.device)], b.wide.to(got.device)[untouched])


# (in, out, max_rank, ranks, segment lengths, segment slots)
CASES = {
    # slots -1, empty segments, a repeated slot, full / partial / zero rank, 4-row tiles +- 1
    "mixed": (96, 80, 16, [16, 8, 3, 0], [5, 0, 1, 7, 0, 4, 3, 3], [1, 2, -1, 0, 3, 2, 0, 1]),
    # sizes off the SIMD width: scalar tails; max_rank 12: the last rank tile element by element
    "odd_sizes": (37, 45, 12, [12, 5, 9], [3, 4, 4], [0, 1, 2]),
    # the decode shape of the benchmark, adapters alternating row by row
    "decode": (576, 1536, 8, [8, 8, 8, 8], [1] * 32, [i % 4 for i in range(32)]),
    # longer than a 64-row piece, enough work for the thread pool
    "prefill": (128, 256, 32, [32, 16], [150, 20, 130], [0, -1, 1]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_matches_reference_and_float64(dtype: torch.dtype, case: str) -> None:
    b = make_batch(dtype, *CASES[case], seed=len(case))
    got, ref = b.wide.clone(), b.wide.clone()
    lora_apply_(*b.args(got))
    lora_apply_reference_(*b.args(ref))
    exact = per_row_float64(b)
    check_close(got, exact, b)
    check_close(ref, exact, b)
    check_close(got, ref.double(), b)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_cpu_isa_paths_agree(isa: str) -> None:
    b = make_batch(torch.bfloat16, *CASES["mixed"], seed=1)
    default = b.wide.clone()
    lora_apply_(*b.args(default))
    try:
        _core.set_cpu_isa(isa)
        capped = b.wide.clone()
        lora_apply_(*b.args(capped))
    finally:
        _core.set_cpu_isa("auto")
    check_close(capped, default.double(), b)


def test_nothing_to_do_leaves_y_bit_for_bit() -> None:
    for lengths, slots in [([], []), ([0, 0], [0, -1])]:  # zero rows
        b = make_batch(torch.float32, 16, 24, 4, [4], lengths, slots)
        assert b.x.shape[0] == 0
        lora_apply_(*b.args(b.wide))
        lora_apply_reference_(*b.args(b.wide))
    b = make_batch(torch.bfloat16, 16, 24, 4, [4, 0], [3, 2, 4], [-1, 1, -1])  # base, rank 0
    y = b.wide.clone()
    lora_apply_(*b.args(y))
    assert torch.equal(y, b.wide)


def _good() -> Batch:
    return make_batch(torch.float32, 16, 24, 4, [4, 2], [2, 4], [0, 1])


@pytest.mark.parametrize("field,value", [
    ("slots", [0, 2]),          # slot >= num_slots
    ("slots", [-2, 1]),         # slot < -1
    ("ranks", [5, 2]),          # rank > max_rank
    ("ranks", [-1, 2]),         # rank < 0
    ("indptr", [0, 4, 3]),      # decreasing
    ("indptr", [0, 2, 5]),      # last != rows
    ("indptr", [1, 2, 6]),      # first != 0
])  # fmt: skip
def test_bad_segments_raise_core_error_before_writing(field: str, value: list[int]) -> None:
    b = _good()
    setattr(b, field, torch.tensor(value, dtype=torch.int32))
    y = b.wide.clone()
    with pytest.raises(_core.CoreError, match="lora_apply"):
        lora_apply_(*b.args(y))
    assert torch.equal(y, b.wide)


def test_bad_dtype_code_raises_core_error() -> None:
    b = _good()
    x, y, A, B, ranks, scaling, indptr, slots = b.args(b.wide)
    with pytest.raises(_core.CoreError, match="invalid argument"):
        _core.lora_apply(x.data_ptr(), y.data_ptr(), _core.DTYPE_FLOAT16, x.shape[0],
                         x.shape[1], x.stride(0), y.shape[1], y.stride(0), A.data_ptr(),
                         B.data_ptr(), A.shape[1], ranks.data_ptr(), scaling.data_ptr(),
                         A.shape[0], indptr.data_ptr(), slots.data_ptr(), slots.numel())  # fmt: skip


def _mutations() -> dict[str, tuple[int, object]]:
    """Argument index -> a wrong value, per error the torch adapter catches."""
    b = _good()
    return {
        "float16": (0, b.x.half()),
        "dtype mismatch": (2, b.A.bfloat16()),
        "x 1-D": (0, b.x[0]),
        "B shape": (3, b.B[:, :-1]),
        "A not contiguous": (2, b.A.transpose(1, 2).contiguous().transpose(1, 2)),
        "y column stride": (1, torch.zeros(6, 48)[:, ::2]),
        "ranks int64": (4, b.ranks.long()),
        "scaling length": (5, b.scaling[:1]),
        "indptr int64": (6, b.indptr.long()),
        "indptr length": (6, b.indptr[:-1]),
        "slots not contiguous": (7, torch.tensor([0, 9, 1, 9], dtype=torch.int32)[::2]),
    }


@pytest.mark.parametrize("what", list(_mutations()))
def test_bad_tensors_raise_value_error(what: str) -> None:
    b = _good()
    index, value = _mutations()[what]
    args = list(b.args(b.wide.clone()))
    args[index] = value
    with pytest.raises(ValueError, match="lora_apply_"):
        lora_apply_(*args)


# ---- Triton ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not (triton_available() and interpreting()),
                    reason="needs triton in interpreter mode (CPU tensors)")  # fmt: skip
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["mixed", "odd_sizes"])
def test_triton_interpreted_matches_reference(dtype: torch.dtype, case: str) -> None:
    from sglang.srt.lora import triton_lora

    b = make_batch(dtype, *CASES[case], seed=3)
    got, ref = b.wide.clone(), b.wide.clone()
    triton_lora.lora_apply_(*b.args(got))
    lora_apply_reference_(*b.args(ref))
    check_close(got, ref.double(), b)  # (the interpreter rounds to bf16 toward zero: one ulp)


@pytest.mark.skipif(not (triton_available() and interpreting()),
                    reason="needs triton in interpreter mode (CPU tensors)")  # fmt: skip
def test_triton_skips_out_of_range_segments() -> None:
    """Out-of-range values (not reported on a GPU) are read as no adapter, never out of bounds."""
    from sglang.srt.lora import triton_lora

    b = make_batch(torch.float32, 16, 24, 4, [4, 2], [2, 3, 1], [0, 7, 1])
    got, ref = b.wide.clone(), b.wide.clone()
    triton_lora.lora_apply_(*b.args(got))
    b.slots[1] = -1
    lora_apply_reference_(*b.args(ref))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_triton_cuda_matches_reference(dtype: torch.dtype, case: str) -> None:
    assert triton_available(), "the CUDA path needs triton"
    b = make_batch(dtype, *CASES[case], seed=4).to("cuda")
    got, ref = b.wide.clone(), b.wide.clone()
    lora_apply_(*b.args(got))  # dispatches to Triton for CUDA tensors
    lora_apply_reference_(*b.args(ref))
    # bf16: the shrink's products are exact (float32 accumulation); the expand rounds t to TF32
    if dtype == torch.float32:
        tol = {"atol": 1e-4, "rtol": 1e-5}
    else:
        tol = {"atol": 1e-3, "rtol": 2**-6}
    rows = adapted_rows(b).cuda()
    torch.testing.assert_close(got[rows].double(), ref[rows].double(), **tol)
    assert torch.equal(got[~rows], b.wide[~rows])
    pad = torch.ones(b.wide.shape[1], dtype=torch.bool, device="cuda")
    pad[PAD_LEFT : PAD_LEFT + b.out] = False
    assert torch.equal(got[:, pad], b.wide[:, pad])
    cpu = b.to("cpu")
    on_cpu = cpu.wide.clone()
    lora_apply_(*cpu.args(on_cpu))
    torch.testing.assert_close(got.cpu()[rows.cpu()].double(), on_cpu[rows.cpu()].double(), **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_cuda_no_host_sync_and_graph_replay() -> None:
    b = make_batch(torch.bfloat16, *CASES["mixed"], seed=5).to("cuda")
    y = b.wide.clone()
    lora_apply_(*b.args(y))  # compiles the kernels outside the checks below
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lora_apply_(*b.args(y))
    finally:
        torch.cuda.set_sync_debug_mode("default")

    # Capture once, then replay with other segment contents written into the same tensors.
    y.copy_(b.wide)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        lora_apply_(*b.args(y))
    torch.cuda.current_stream().wait_stream(stream)
    rows = b.x.shape[0]
    b.indptr.copy_(torch.tensor([0, 2, 2, 9, rows, rows, rows, rows, rows], dtype=torch.int32))
    b.slots.copy_(torch.tensor([3, 0, 1, 2, -1, -1, -1, -1], dtype=torch.int32))
    y.copy_(b.wide)
    graph.replay()
    ref = b.wide.clone()
    lora_apply_reference_(*b.args(ref))
    torch.testing.assert_close(y.double(), ref.double(), atol=1e-3, rtol=2**-6)
