"""benchmarks/bench_cpu_vs_llamacpp.py: cpuinfo parsing, the llama.cpp build flags and the table.
No server, no model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location(
    "bench_cpu_vs_llamacpp", REPO / "benchmarks" / "bench_cpu_vs_llamacpp.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16
"""


def test_cpuinfo_parsing() -> None:
    assert bench.cpu_model(CPUINFO) == "AMD EPYC 9R14"
    assert bench.cpu_model("") == "unknown"
    flags = bench.cpu_flags(CPUINFO)
    assert {"avx2", "avx512_bf16"} <= flags
    assert bench.isa_summary(flags).startswith("sse4_2 avx avx2 fma f16c avx512f")
    assert bench.isa_summary(set()) == "unknown"


def test_cmake_args_follow_the_cpu_and_never_native() -> None:
    full = bench.llamacpp_cmake_args(bench.cpu_flags(CPUINFO))
    assert "-DGGML_NATIVE=OFF" in full and "-DGGML_AVX512_BF16=ON" in full
    assert "-DGGML_AVX512=ON" in full and "-DLLAMA_CURL=OFF" in full
    avx2_only = bench.llamacpp_cmake_args({"avx", "avx2", "fma", "f16c"})
    assert "-DGGML_AVX2=ON" in avx2_only and "-DGGML_AVX512=OFF" in avx2_only
    assert "NATIVE=ON" not in bench.llamacpp_build_command({"amx_tile", "avx512f"})


def test_random_prompt_is_seeded_and_skips_special_ids() -> None:
    a = bench.random_prompt(500, 64, seed=1)
    assert a == bench.random_prompt(500, 64, seed=1) != bench.random_prompt(500, 64, seed=2)
    assert len(a) == 64 and min(a) >= bench.FIRST_ID and max(a) < 500


def test_table_has_a_row_per_system_and_na_for_missing() -> None:
    table = bench.format_table(
        {
            "ours-runner": {"decode_tok_s": 123.456, "ttft_ms": 45.6},
            "llamacpp": {"decode_tok_s": 300.0, "ttft_ms": 9.87, "conc16_tok_s": 250.0},
        },
        [16, 32],
        512,
    )
    lines = table.splitlines()
    assert lines[0] == (
        "| system | bs1 decode tok/s | TTFT 512 ms | 16-conc tok/s | 32-conc tok/s |"
    )
    assert lines[2] == "| ours-runner | 123.5 | 45.6 | n/a | n/a |"
    assert lines[3] == "| llamacpp | 300.0 | 9.87 | 250.0 | n/a |"


def test_rounds_report_the_median_per_system_and_metric() -> None:
    rounds = {"ours-http": {"decode_tok_s": [150.0, 90.0, 120.0]}, "hf": {"ttft_ms": [2.0, 4.0]}}
    assert bench.median_table(rounds) == {
        "ours-http": {"decode_tok_s": 120.0},
        "hf": {"ttft_ms": 3.0},
    }
