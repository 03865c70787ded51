"""Decoder embedding models (gte-Qwen2 / Qwen3-Embedding style) in the generation engine's
embedding mode: each request's embedding is the final hidden state of its last prompt token,
L2-normalised, equal to transformers' base model (``last_hidden_state[-1]``) within 1e-4 in fp32,
for requests batched together and for one that reuses a cached prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_test_utils import PROMPTS, encode_with_two_ranks
from sglang.srt.managers.engine_core import EngineCore
from sglang.srt.managers.io_struct import TokenizedGenerateReq
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs


def _engine(folder: Path) -> EngineCore:
    args = ServerArgs(model_path=str(folder), is_embedding=True, skip_tokenizer_init=True,
                      device="cpu", dtype="float32", random_seed=0)  # fmt: skip
    return EngineCore(args)


def _run(engine: EngineCore, prompts: list[list[int]], dims: int | None = None) -> dict:
    for i, p in enumerate(prompts):
        req = TokenizedGenerateReq(rid=f"r{i}", input_ids=p,
                                   sampling=SamplingParams(max_new_tokens=0), dimensions=dims)  # fmt: skip
        assert engine.add_request(req) is None
    outs = {}
    while not engine.idle():
        for out in engine.step() or []:
            assert out.finish_reason is not None and not out.finish_reason.is_error
            assert out.new_token_ids == []
            outs[out.rid] = out.embedding
    return outs


def _reference(folder: Path, prompt: list[int]) -> torch.Tensor:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        last = model(torch.tensor([prompt])).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(last, dim=-1)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_last_token_embeddings_match_transformers(arch: str, tiny_models: dict[str, Path]) -> None:
    engine = _engine(tiny_models[arch])
    assert engine.ready_info().is_embedding
    outs = _run(engine, PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        ours = torch.tensor(outs[f"r{i}"])
        torch.testing.assert_close(ours, _reference(tiny_models[arch], prompt), atol=1e-4, rtol=0)
    # The prompts share a prefix: a later request reuses the cached KV and gets the same vector.
    again = _run(engine, [PROMPTS[2]])
    torch.testing.assert_close(torch.tensor(again["r0"]), torch.tensor(outs["r2"]),
                               atol=1e-5, rtol=0)  # fmt: skip
    assert engine.core.stats().cache_hit_tokens > 0
    assert engine.internal_state()["integrity_ok"]


def test_dimensions_truncate_then_normalise(tiny_models: dict[str, Path]) -> None:
    engine = _engine(tiny_models["qwen2"])
    full = torch.tensor(_run(engine, [PROMPTS[0]])["r0"])
    cut = torch.tensor(_run(engine, [PROMPTS[0]], dims=16)["r0"])
    assert cut.shape == (16,) and abs(float(cut.norm()) - 1.0) < 1e-5
    torch.testing.assert_close(cut, torch.nn.functional.normalize(full[:16], dim=0),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_offline_engine_serves_a_decoder_embedding_model(tiny_models: dict[str, Path]) -> None:
    """The whole path (engine process in embedding mode, the HTTP side's encode) on Qwen3."""
    import sglang as sgl

    folder = tiny_models["qwen3"]
    with sgl.Engine(model_path=str(folder), is_embedding=True, skip_tokenizer_init=True,
                    dtype="float32", random_seed=0) as engine:  # fmt: skip
        out = engine.encode(input_ids=PROMPTS[:2])
        assert [o["meta_info"]["prompt_tokens"] for o in out] == [len(p) for p in PROMPTS[:2]]
        for o, prompt in zip(out, PROMPTS[:2]):
            torch.testing.assert_close(torch.tensor(o["embedding"]), _reference(folder, prompt),
                                       atol=1e-4, rtol=0)  # fmt: skip
        with pytest.raises(ValueError, match="--is-embedding"):
            engine.generate(input_ids=PROMPTS[0], sampling_params={"max_new_tokens": 2})


def _save_base_model(source: Path, folder: Path) -> Path:
    """A base-model checkpoint (``Qwen2Model`` / ``Qwen3Model``) with the config of ``source``."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(source)
    config.tie_word_embeddings = False
    torch.manual_seed(5)
    model = AutoModel.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_base_model_checkpoints(arch: str, tiny_models: dict[str, Path],
                                tmp_path: Path) -> None:  # fmt: skip
    """``Qwen2Model`` / ``Qwen3Model`` checkpoints (gte-Qwen2 style: the decoder alone, tensor
    names without ``model.``, no LM head, untied) embed like transformers' base model, and refuse
    to generate."""
    _save_base_model(tiny_models[arch], tmp_path)
    from safetensors import safe_open

    with safe_open(str(next(tmp_path.glob("*.safetensors"))), "pt") as f:
        names = list(f.keys())
    assert "embed_tokens.weight" in names and not any(n.startswith("lm_head") for n in names)
    engine = _engine(tmp_path)
    assert engine.model_config.architecture == f"{arch.capitalize()}Model"
    outs = _run(engine, PROMPTS[:2])
    for i, prompt in enumerate(PROMPTS[:2]):
        torch.testing.assert_close(torch.tensor(outs[f"r{i}"]), _reference(tmp_path, prompt),
                                   atol=1e-4, rtol=0)  # fmt: skip
    args = ServerArgs(model_path=str(tmp_path), skip_tokenizer_init=True, device="cpu",
                      dtype="float32")  # fmt: skip
    with pytest.raises(ValueError, match="--is-embedding"):
        EngineCore(args)


def test_tensor_parallel_embeddings(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """--tp-size 2 (two gloo ranks): a Qwen3Model checkpoint (one KV head, replicated) embeds
    like transformers' base model."""
    folder = _save_base_model(tiny_models["qwen3"], tmp_path)
    out = encode_with_two_ranks(folder, PROMPTS[:3])
    for got, prompt in zip(out, PROMPTS[:3], strict=True):
        torch.testing.assert_close(got, _reference(folder, prompt), atol=1e-4, rtol=0)
