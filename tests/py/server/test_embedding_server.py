"""An --is-embedding server on the real all-MiniLM-L6-v2 (alias ``all-minilm-l6-v2``): ``/encode``
(text, batch, input_ids) and ``/v1/embeddings`` through the ``openai`` client against
sentence-transformers, the contract's validation messages, generation routes refused with a 400,
health, and the offline ``sgl.Engine(is_embedding=True).encode``."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import torch
from server_utils import serving

MODEL = "all-minilm-l6-v2"
SENTENCES = ["The cat sits outside.", "A man is playing guitar.", "I love pasta."]


@pytest.fixture(scope="module")
def emb_server() -> Iterator[str]:
    with serving(
        MODEL, ["--is-embedding", "--max-batch-size", "16", "--log-level", "warning"]
    ) as url:
        yield url


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    st = pytest.importorskip("sentence_transformers")
    from sglang.srt.model_loader.resolve import resolve_model_path

    folder = resolve_model_path(MODEL).folder
    return st.SentenceTransformer(folder, device="cpu").encode(SENTENCES)


def _cos(a: list[float], b: np.ndarray) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0))


def test_encode_single_and_batch_match_sentence_transformers(emb_server: str, reference) -> None:
    one = requests.post(f"{emb_server}/encode", json={"text": SENTENCES[0]}, timeout=60).json()
    assert len(one["embedding"]) == 384 and _cos(one["embedding"], reference[0]) > 0.9999
    meta = one["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 0}
    assert meta["prompt_tokens"] == 7 and meta["weight_version"] == "default"
    assert {"id", "num_retractions", "e2e_latency"} <= set(meta)
    batch = requests.put(f"{emb_server}/encode", json={"text": SENTENCES, "rid": ["a", "b", "c"]},
                         timeout=60).json()  # fmt: skip
    assert [r["meta_info"]["id"] for r in batch] == ["a", "b", "c"]
    for row, ref in zip(batch, reference):
        assert _cos(row["embedding"], ref) > 0.9999
    assert abs(np.linalg.norm(batch[1]["embedding"]) - 1.0) < 1e-5  # normalized


def test_input_ids_equal_text(emb_server: str) -> None:
    tok = requests.post(f"{emb_server}/tokenize", json={"prompt": SENTENCES[1]}, timeout=30).json()
    by_ids = requests.post(f"{emb_server}/encode", json={"input_ids": tok["tokens"]}, timeout=60)
    by_text = requests.post(f"{emb_server}/encode", json={"text": SENTENCES[1]}, timeout=60)
    assert np.allclose(by_ids.json()["embedding"], by_text.json()["embedding"], atol=1e-6)
    pair = requests.post(
        f"{emb_server}/encode", json={"input_ids": [tok["tokens"]] * 2}, timeout=60
    )
    assert len(pair.json()) == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "Either text or input_ids"),
        ({"text": []}, "Either text or input_ids"),
        ({"text": "a", "input_ids": [1, 2]}, "Only one of text or input_ids"),
        ({"input_ids": []}, "input_ids cannot be empty"),
        ({"input_ids": [1, 10**6]}, "out of"),
        ({"input_ids": [1] * 600}, "longer than the model's context length (512 tokens)"),
        ({"text": "a", "dimensions": 8}, "does not support matryoshka"),
        ({"text": "a", "dimensions": 0}, "greater than 0"),
        ({"text": "a", "image_data": "x.png"}, "image_data is not supported"),
        ({"text": "a", "lora_path": "x"}, "lora_path is not supported"),
        ({"text": "a", "is_cross_encoder_request": True}, "cross-encoder"),
        ({"text": [["query", "doc"]]}, "cross-encoder"),
        ({"text": 5}, "text"),
        ({"text": ["a"] * 17}, "--max-batch-size"),
        ({"text": "a", "rid": ["x", "y"]}, "rid"),
    ],
)
def test_encode_validation(emb_server: str, body: dict, needle: str) -> None:
    r = requests.post(f"{emb_server}/encode", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in r.text, r.text


def test_generation_routes_refused(emb_server: str) -> None:
    for path, body in (("/generate", {"text": "hi"}),
                       ("/v1/completions", {"model": "m", "prompt": "hi"}),
                       ("/v1/chat/completions",
                        {"model": "m", "messages": [{"role": "user", "content": "hi"}]})):  # fmt: skip
        r = requests.post(f"{emb_server}{path}", json=body, timeout=60)
        assert r.status_code == 400 and "--is-embedding" in r.text, (path, r.text)
    r = requests.post(f"{emb_server}/v1/classify", json={"input": "hi"}, timeout=60)
    assert r.status_code == 400 and "not a classification" in r.text, r.text
    assert requests.get(f"{emb_server}/health", timeout=60).status_code == 200
    info = requests.get(f"{emb_server}/get_model_info", timeout=30).json()
    assert info["is_generation"] is False


def test_v1_embeddings_through_openai(emb_server: str, reference) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{emb_server}/v1", api_key="none")
    out = client.embeddings.create(model="anything", input=SENTENCES)
    assert [d.index for d in out.data] == [0, 1, 2] and out.model == MODEL
    for d, ref in zip(out.data, reference):
        assert _cos(d.embedding, ref) > 0.9999
    assert out.usage.prompt_tokens == out.usage.total_tokens > 0
    r = requests.post(f"{emb_server}/v1/embeddings",
                      json={"input": SENTENCES[2], "encoding_format": "base64"}, timeout=60)  # fmt: skip
    raw = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert _cos(raw.tolist(), reference[2]) > 0.9999
    ids = requests.post(f"{emb_server}/tokenize", json={"prompt": "hello"}, timeout=30).json()
    r = requests.post(f"{emb_server}/v1/embeddings", json={"input": [ids["tokens"]]}, timeout=60)
    assert r.status_code == 200 and len(r.json()["data"]) == 1
    r = requests.post(
        f"{emb_server}/v1/embeddings", json={"input": "a", "dimensions": 4}, timeout=60
    )
    assert r.status_code == 400 and "matryoshka" in r.json()["message"]


def test_offline_engine_encode(reference) -> None:
    import sglang as sgl

    with sgl.Engine(model_path=MODEL, is_embedding=True) as engine:
        out = engine.encode(SENTENCES[0])
        assert _cos(out["embedding"], reference[0]) > 0.9999
        batch = engine.encode(SENTENCES[1:])
        assert len(batch) == 2 and _cos(batch[1]["embedding"], reference[2]) > 0.9999
        with pytest.raises(ValueError, match="--is-embedding"):
            engine.generate("hi")
