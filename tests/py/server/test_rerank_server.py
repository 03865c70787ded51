"""``/v1/rerank``: a tiny random BERT cross-encoder (with all-MiniLM-L6-v2's tokenizer) served with
--is-embedding, scored against transformers on the same (query, document) pairs; the native
document's example, ``top_n``, ``return_documents``, the contract's validation messages;
cross-encoder pairs through ``/encode`` and the offline ``Engine.rerank``; and the yes/no decoder
reranker path on the demo generation server (scores equal P(yes) from ``/generate``'s
``token_ids_logprob`` on the same prompt; the shared prefix comes from the radix cache)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from server_utils import serving

QUERY = "what is panda?"
PANDA = ("The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply "
         "panda, is a bear species endemic to China.")
DOCS = ["hi", PANDA]
MORE_DOCS = ["Pandas eat bamboo.", "A car is a vehicle.", "Paris is in France."]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sglang.srt.model_loader.resolve import resolve_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-minilm-l6-v2").folder)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        num_labels=1)  # fmt: skip
    torch.manual_seed(3)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # larger than the default init: well spread-out scores
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.normal_(0, 0.2)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _reference(folder: Path, docs: list[str]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [float(model(**tok(QUERY, d, return_tensors="pt")).logits[0, 0]) for d in docs]


@pytest.fixture(scope="module")
def rerank_server(cross_encoder: Path) -> Iterator[str]:
    with serving(str(cross_encoder), ["--is-embedding", "--dtype", "float32",
                                      "--log-level", "warning"]) as url:  # fmt: skip
        yield url


def _rerank(url: str, **body: object) -> requests.Response:
    return requests.post(f"{url}/v1/rerank", json=body, timeout=60)


def test_native_example_sorted_with_indices(rerank_server: str, cross_encoder: Path) -> None:
    ref = _reference(cross_encoder, DOCS)
    r = _rerank(rerank_server, model="m", query=QUERY, documents=DOCS)
    assert r.status_code == 200, r.text
    items = r.json()
    assert len(items) == 2 and [set(i) for i in items] == [
        {"score", "document", "index", "meta_info"}] * 2
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    for item in items:
        assert item["document"] == DOCS[item["index"]]
        assert abs(item["score"] - ref[item["index"]]) < 1e-4
        assert item["meta_info"]["prompt_tokens"] > 0
    assert ref[0] != pytest.approx(ref[1], abs=1e-3)  # the order is decided by the scores


def test_top_n_and_return_documents(rerank_server: str, cross_encoder: Path) -> None:
    docs = DOCS + MORE_DOCS
    ref = _reference(cross_encoder, docs)
    best = max(range(len(docs)), key=ref.__getitem__)
    (one,) = _rerank(rerank_server, query=QUERY, documents=docs, top_n=1).json()
    assert one["index"] == best and one["document"] == docs[best]
    items = _rerank(rerank_server, query=QUERY, documents=docs, top_n=10,
                    return_documents=False).json()  # fmt: skip
    assert len(items) == len(docs) and all("document" not in i for i in items)
    assert [i["index"] for i in items] == sorted(range(len(docs)), key=lambda i: -ref[i])


@pytest.mark.parametrize(("body", "message"), [
    ({"query": "", "documents": ["a"]}, "Query cannot be empty"),
    ({"query": "   ", "documents": ["a"]}, "Query cannot be empty or whitespace only"),
    ({"query": "q", "documents": []}, "Documents cannot be empty"),
    ({"query": "q", "documents": ["a", ""]}, "Each document must be a non-empty string"),
    ({"query": "q", "documents": [" \n"]}, "Each document cannot be empty or whitespace only"),
    ({"query": "q", "documents": ["a"], "top_n": 0},
     "Value error, parameter top_n should be larger than 0."),
    ({"query": "q", "documents": ["a"], "top_n": -3}, "parameter top_n should be larger than 0"),
    ({"query": "q"}, "documents"),
    ({"documents": ["a"]}, "query"),
    ({"query": "q", "documents": "a"}, "documents"),
    ({"query": "q", "documents": [{"type": "image_url"}]}, "not supported"),
    ({"query": "q", "documents": ["a"], "top_n": "x"}, "top_n"),
])  # fmt: skip
def test_validation_messages(rerank_server: str, body: dict, message: str) -> None:
    r = _rerank(rerank_server, **body)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]


def test_rerank_needs_json(rerank_server: str) -> None:
    r = requests.post(f"{rerank_server}/v1/rerank", data="query=q", timeout=30,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 400 and "Unsupported Media Type" in r.text


def test_encode_with_pairs(rerank_server: str, cross_encoder: Path) -> None:
    ref = _reference(cross_encoder, DOCS)
    body = {"text": [[QUERY, d] for d in DOCS], "is_cross_encoder_request": True}
    rows = requests.post(f"{rerank_server}/encode", json=body, timeout=60).json()
    assert [abs(row["embedding"] - want) < 1e-4 for row, want in zip(rows, ref)] == [True, True]
    for bad, needle in [({"text": [["only one"]]}, "pair"), ({"text": [[QUERY, 3]]}, "pair"),
                        ({"text": "x", "is_cross_encoder_request": True}, "pairs")]:
        r = requests.post(f"{rerank_server}/encode", json=bad, timeout=30)
        assert r.status_code == 400 and needle in r.text, r.text
    r = requests.post(f"{rerank_server}/v1/chat/completions", timeout=30,
                      json={"messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 400 and "--is-embedding" in r.text


def test_offline_engine_rerank(cross_encoder: Path) -> None:
    import sglang as sgl

    ref = _reference(cross_encoder, DOCS)
    with sgl.Engine(model_path=str(cross_encoder), is_embedding=True, dtype="float32",
                    log_level="warning") as llm:  # fmt: skip
        out = llm.rerank([[QUERY, d] for d in DOCS])
        with pytest.raises(ValueError, match="pair"):
            llm.rerank([["just a query"]])
    assert [abs(o["embedding"] - want) < 1e-4 for o, want in zip(out, ref)] == [True, True]


# ---- the decoder yes/no reranker on the demo generation server ---------------------------------
def test_yes_no_reranker_on_generation_server(server: str) -> None:
    from sglang.srt.entrypoints.openai.rerank import yes_no_parts

    def tokens(texts: list[str]) -> list[list[int]]:
        r = requests.post(f"{server}/tokenize", timeout=30,
                          json={"prompt": texts, "add_special_tokens": False})  # fmt: skip
        return r.json()["tokens"]

    docs = DOCS + MORE_DOCS
    r = _rerank(server, query=QUERY, documents=docs, instruct="Find facts about pandas")
    assert r.status_code == 200, r.text
    items = r.json()
    assert sorted(i["index"] for i in items) == list(range(len(docs)))
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    (yes,), (no,) = tokens(["yes", "no"])
    for item in items:
        parts = yes_no_parts(QUERY, docs[item["index"]], "Find facts about pandas")
        ids = [t for part in tokens(list(parts)) for t in part]
        out = requests.post(f"{server}/generate", timeout=60, json={
            "input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0},
            "return_logprob": True, "token_ids_logprob": [yes, no]}).json()  # fmt: skip
        lps = {tok: lp for lp, tok, _ in out["meta_info"]["output_token_ids_logprobs"][0]}
        want = 1.0 / (1.0 + math.exp(lps[no] - lps[yes]))
        assert 0.0 < item["score"] < 1.0 and abs(item["score"] - want) < 1e-4
        assert item["document"] == docs[item["index"]]
    # the instruction and query are shared: every document found them in the cache
    assert all(i["meta_info"]["cached_tokens"] > 20 for i in items)
    r = _rerank(server, query=QUERY, documents=docs, top_n=2, return_documents=False)
    assert [i["index"] for i in r.json()] == [i["index"] for i in items[:2]]
    r = _rerank(server, query=" ", documents=docs)
    assert r.status_code == 400 and "whitespace" in r.json()["message"]
