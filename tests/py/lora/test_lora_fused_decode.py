"""LoRA inside the fused C++ decode step (``decode_layers_cpu`` with ``DecoderLoraCpu``): on the
demo GGUF model (quantized weights: the model the fused decode serves), a batch mixing two
adapters (one on every projection, one on q/v/down only) and the base model decodes the same
tokens with the same logprobs as the Python layers with their ``Linear`` hooks, and the fused
path really ran for the adapter steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sglang.srt.layers.decode_layers_cpu import FusedDecodeLayers
from sglang.srt.managers.engine_core import EngineCore
from sglang.srt.managers.io_struct import TokenizedGenerateReq
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

DEMO = "smollm2-135m-instruct"
# SmolLM2-135M: hidden 576, 3 KV heads of 64, MLP 1536, 30 layers.
SHAPES = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192),
          "o_proj": (576, 576), "gate_proj": (576, 1536), "up_proj": (576, 1536),
          "down_proj": (1536, 576)}  # fmt: skip
NEW = 12


def _adapter(folder: Path, seed: int, rank: int, targets: list[str]) -> str:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(30):
        for module in targets:
            fan_in, fan_out = SHAPES[module]
            key = f"base_model.model.model.layers.{layer}." \
                  f"{'self_attn' if module[0] in 'qkvo' else 'mlp'}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) / fan_in**.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.05
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": targets}))
    return str(folder)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> EngineCore:
    root = tmp_path_factory.mktemp("fused-lora")
    paths = {"every": _adapter(root / "every", 1, 8, list(SHAPES)),
             "some": _adapter(root / "some", 2, 4, ["q_proj", "v_proj", "down_proj"])}
    args = ServerArgs(model_path=DEMO, lora_paths=paths, max_lora_rank=8, max_total_tokens=4096,
                      max_running_requests=8, random_seed=5)
    engine = EngineCore(args)
    assert engine.runner.model.model.fused_decode is not None  # the model the fused path serves
    return engine


def _run(engine: EngineCore, names: list[str | None], tag: str) -> dict[str, Any]:
    outs: dict[str, Any] = {}
    for i, name in enumerate(names):
        prompt = [(131 * i + 17 * j) % 30000 + 100 for j in range(10 + 3 * i)]
        sampling = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)
        sampling.normalize()  # greedy, as the HTTP side sends it
        error = engine.add_request(TokenizedGenerateReq(
            rid=f"{tag}{i}", input_ids=prompt, return_logprob=True, lora_name=name,
            sampling=sampling))
        assert error is None
        outs[f"{tag}{i}"] = ([], [])
    while not engine.idle():
        for out in engine.step() or []:
            ids, lps = outs[out.rid]
            ids.extend(out.new_token_ids)
            lps.extend(lp for lp, _ in out.output_token_logprobs or [])
    engine.flush_cache()
    return {rid.removeprefix(tag): v for rid, v in outs.items()}


def test_fused_decode_with_adapters_matches_python_layers(engine: EngineCore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["every", None, "some", "every", "some"]
    calls = {"lora": 0}
    run = FusedDecodeLayers.run

    def counting(self: Any, batch: Any, *args: Any) -> Any:
        if batch.lora is not None:
            calls["lora"] += 1
        return run(self, batch, *args)

    monkeypatch.setattr(FusedDecodeLayers, "run", counting)
    fused = _run(engine, names, "f")
    assert calls["lora"] >= NEW - 1  # the decode steps of the adapter rows ran fused
    model = engine.runner.model.model
    saved, model.fused_decode = model.fused_decode, None
    try:
        python = _run(engine, names, "p")
    finally:
        model.fused_decode = saved
    base_only = _run(engine, [None] * len(names), "b")
    for key, (ids, lps) in fused.items():
        assert ids == python[key][0], key
        assert lps == pytest.approx(python[key][1], abs=1e-4), key
    # The adapters change the output (else the comparison above would prove nothing).
    assert fused["0"][0] != base_only["0"][0] and fused["2"][0] != base_only["2"][0]
    assert fused["1"][0] == base_only["1"][0]
