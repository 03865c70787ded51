"""Reward and classification models (``LlamaForSequenceClassification``,
``Qwen2ForSequenceClassification``) served with --is-embedding: the score head's logits at the
last prompt token equal transformers' within 1e-4 (fp32), in the engine and through HTTP
(``/classify``: reward at ``embedding[0]``; ``/v1/classify``: probs, label, num_classes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from model_test_utils import PROMPTS, VOCAB, encode_with_two_ranks
from sglang.srt.managers.engine_core import EngineCore
from sglang.srt.managers.io_struct import TokenizedGenerateReq
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _save(kind: str, folder: Path) -> Path:
    from transformers import (
        LlamaConfig,
        LlamaForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
    )

    common = {
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "pad_token_id": 0,
    }  # fmt: skip
    torch.manual_seed(1)
    if kind == "llama_reward":
        model = LlamaForSequenceClassification(LlamaConfig(**common, num_labels=1))
    else:
        config = Qwen2Config(**common, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
        model = Qwen2ForSequenceClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    model.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {k: _save(k, tmp_path_factory.mktemp(k)) for k in ("llama_reward", "qwen2_classes")}


def _reference(folder: Path, prompt: list[int]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([prompt])).logits[0]


@pytest.mark.parametrize("kind", ["llama_reward", "qwen2_classes"])
def test_scores_match_transformers(kind: str, classifiers: dict[str, Path]) -> None:
    args = ServerArgs(model_path=str(classifiers[kind]), is_embedding=True,
                      skip_tokenizer_init=True, device="cpu", dtype="float32", random_seed=0)  # fmt: skip
    engine = EngineCore(args)
    info = engine.ready_info()
    assert info.is_embedding and not info.matryoshka
    assert info.id2label == ({0: "LABEL_0"} if kind == "llama_reward" else LABELS)
    for i, p in enumerate(PROMPTS):
        req = TokenizedGenerateReq(rid=f"r{i}", input_ids=p,
                                   sampling=SamplingParams(max_new_tokens=0))  # fmt: skip
        assert engine.add_request(req) is None
    outs = {}
    while not engine.idle():
        for out in engine.step() or []:
            outs[out.rid] = out.embedding
    for i, p in enumerate(PROMPTS):
        torch.testing.assert_close(torch.tensor(outs[f"r{i}"]), _reference(classifiers[kind], p),
                                   atol=1e-4, rtol=0)  # fmt: skip


def test_tensor_parallel_scores(classifiers: dict[str, Path]) -> None:
    """--tp-size 2 (two gloo ranks): the sharded decoder and the replicated score head give
    transformers' logits."""
    folder = classifiers["qwen2_classes"]
    out = encode_with_two_ranks(folder, PROMPTS[:3])
    for got, prompt in zip(out, PROMPTS[:3], strict=True):
        torch.testing.assert_close(got, _reference(folder, prompt), atol=1e-4, rtol=0)


def test_classifier_needs_is_embedding(classifiers: dict[str, Path]) -> None:
    args = ServerArgs(model_path=str(classifiers["llama_reward"]), skip_tokenizer_init=True,
                      device="cpu", dtype="float32")  # fmt: skip
    with pytest.raises(ValueError, match="--is-embedding"):
        EngineCore(args)


@pytest.fixture(scope="module")
def classify_server(classifiers: dict[str, Path]) -> Iterator[str]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
    from server_utils import serving

    with serving(str(classifiers["qwen2_classes"]),
                 ["--is-embedding", "--skip-tokenizer-init", "--dtype", "float32",
                  "--log-level", "warning"]) as url:  # fmt: skip
        yield url


def test_classify_routes(classify_server: str, classifiers: dict[str, Path]) -> None:
    url = classify_server
    ref = [_reference(classifiers["qwen2_classes"], p) for p in PROMPTS[:2]]
    r = requests.post(f"{url}/classify", json={"input_ids": PROMPTS[:2]}, timeout=60)
    assert r.status_code == 200, r.text
    for row, want in zip(r.json(), ref):
        assert np.allclose(row["embedding"], want.numpy(), atol=1e-4)
    r = requests.post(f"{url}/v1/classify", json={"model": "m", "input": PROMPTS[0]}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "m" and body["usage"]["prompt_tokens"]
    (item,) = body["data"]
    probs = torch.softmax(ref[0], -1)
    assert item["num_classes"] == 3 and np.allclose(item["probs"], probs.numpy(), atol=1e-4)
    assert item["label"] == LABELS[int(probs.argmax())]
    r = requests.post(f"{url}/v1/classify", json={"input": ""}, timeout=60)
    assert r.status_code == 400 and "Input cannot be empty" in r.text
    r = requests.post(f"{url}/generate", json={"input_ids": [1, 2]}, timeout=60)
    assert r.status_code == 400 and "--is-embedding" in r.text


def test_reward_of_chat_templated_conversations(tmp_path: Path) -> None:
    """The documented reward-model flow: conversations rendered with the tokenizer's chat template
    on the client, sent as a batch of texts; ``embedding[0]`` is transformers' reward."""
    import sglang as sgl
    from sglang.srt.hf_transformers_utils import get_tokenizer
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    tokenizer = get_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, num_labels=1, pad_token_id=0)  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    conversations = [
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "5."}],
    ]
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    with sgl.Engine(model_path=str(tmp_path), is_embedding=True, dtype="float32",
                    log_level="warning") as engine:  # fmt: skip
        out = engine.encode(texts)
    with torch.inference_mode():
        for row, text in zip(out, texts):
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            want = float(model(ids).logits[0, 0])
            assert len(row["embedding"]) == 1 and abs(row["embedding"][0] - want) < 1e-4
    assert out[0]["embedding"][0] != pytest.approx(out[1]["embedding"][0], abs=1e-3)
