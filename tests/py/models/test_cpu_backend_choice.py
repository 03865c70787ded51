"""Which attention backend (and so which kernels) a CPU model runs with: the fused C++ kernels
by default where the model's shapes fit them, the SDPA reference otherwise; an explicit request
that cannot work is a clear error at start-up, never a failed step later."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_test_utils import save_tiny_model
from sglang.srt.model_executor.model_runner import ModelRunner


@pytest.fixture(scope="module")
def head_dim_8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return save_tiny_model(cfg, tmp_path_factory.mktemp("hd8") / "m")


def test_default_is_the_fused_backend_where_it_fits(tiny_models: dict[str, Path]) -> None:
    runner = ModelRunner(str(tiny_models["llama"]), dtype="float32")
    assert runner.attention_backend == "cpu"
    assert runner.model.model.layers[0].input_layernorm.use_cpu_kernels
    alias = ModelRunner(str(tiny_models["llama"]), dtype="float32", attention_backend="intel_amx")
    assert alias.attention_backend == "cpu"


def test_unfit_shapes_fall_back_or_fail_clearly(head_dim_8: Path) -> None:
    runner = ModelRunner(str(head_dim_8), dtype="float32")
    assert runner.attention_backend == "torch_native"
    assert not runner.model.model.layers[0].input_layernorm.use_cpu_kernels
    with pytest.raises(ValueError, match="head_dim that is a multiple of 16"):
        ModelRunner(str(head_dim_8), dtype="float32", attention_backend="cpu")
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        ModelRunner(str(head_dim_8), dtype="float16", attention_backend="cpu")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quantization", "int3"], "invalid choice"),
        (["--attention-backend", "flashinfer"], "invalid choice"),
        (["--torch-compile-max-bs", "0"], "--torch-compile-max-bs must be at least 1"),
        (["--device", "cuda", "--attention-backend", "cpu"], "runs on the CPU only"),
        (["--device", "cpu", "--attention-backend", "triton"], "runs on CUDA only"),
        (["--cuda-graph-max-bs", "0"], "--cuda-graph-max-bs must be at least 1"),
        (["--cuda-graph-max-bs", "two"], "invalid int value"),
    ],
)
def test_cpu_path_flags_are_validated(argv: list[str], message: str) -> None:
    import argparse
    import contextlib
    import io

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    err = io.StringIO()
    with pytest.raises((SystemExit, ValueError)) as info, contextlib.redirect_stderr(err):
        ServerArgs.from_cli_args(parser.parse_args(["--model-path", "m", *argv]))
    assert message in (err.getvalue() + str(info.value))


def test_cpu_path_flags_parse() -> None:
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = ServerArgs.from_cli_args(
        parser.parse_args(
            ["--model-path", "m", "--device", "cpu", "--quantization", "w8a16",
             "--attention-backend", "intel_amx", "--enable-torch-compile"]
        )
    )  # fmt: skip
    assert (args.quantization, args.attention_backend, args.enable_torch_compile) == (
        "w8a16", "intel_amx", True,
    )  # fmt: skip


def test_torch_compile_gives_the_same_tokens(
    tiny_models: dict[str, Path], hf_reference: dict[str, list[list[int]]]
) -> None:
    from model_test_utils import NEW_TOKENS, PROMPTS, GreedyDriver

    runner = ModelRunner(
        str(tiny_models["llama"]), dtype="float32", enable_torch_compile=True,
        torch_compile_max_bs=4,
    )  # fmt: skip
    layer = runner.model.model.layers[0]
    assert layer.compiled_mlp is not None and layer.compiled_max_tokens == 4
    outs = GreedyDriver(runner).generate(PROMPTS[:2], NEW_TOKENS)
    assert outs == hf_reference["llama"][:2]
