"""Encoder cross-encoders (BertForSequenceClassification, XLMRobertaForSequenceClassification) and
the XLM-RoBERTa encoder: tiny random checkpoints against transformers (fp32, 1e-4), query and
document as one pair with token types where the model has them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.hf_transformers_utils import get_config
from sglang.srt.model_loader.loader import load_model
from sglang.srt.model_loader.resolve import resolve_model_path

COMMON = {"vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 128}  # fmt: skip
# (query ids, document ids): a pair is [CLS] q [SEP] d [SEP] with d's token type 1.
PAIRS = [([5, 17, 99], [3, 8, 40, 41, 7]), ([7], [250]), ([12, 250, 31, 8], [9, 40, 2, 101, 6, 6])]


def _load(folder: Path) -> torch.nn.Module:
    source = resolve_model_path(folder)
    return load_model(source, ModelConfig.from_hf_config(get_config(source), dtype="float32"))


def _save(kind: str, folder: Path, labels: int) -> Path:
    import transformers as tf

    torch.manual_seed(1)
    if kind == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(
            **COMMON, max_position_embeddings=64, num_labels=labels))
    elif kind == "xlmr":
        model = tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(
            **COMMON, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
            layer_norm_eps=1e-5, num_labels=labels))
    else:
        model = tf.XLMRobertaModel(tf.XLMRobertaConfig(
            **COMMON, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1),
            add_pooling_layer=False)
    with torch.no_grad():  # larger head weights than the default init: well-separated scores
        for name, p in model.named_parameters():
            if "classifier" in name or "pooler" in name:
                p.normal_(0, 0.5)
    model.eval().save_pretrained(folder)
    return folder


def _pair(q: list[int], d: list[int]) -> tuple[list[int], list[int]]:
    ids = [101, *q, 102, *d, 102]
    return ids, [0] * (len(q) + 2) + [1] * (len(d) + 1)


def _flat(rows: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    starts = [0]
    for r in rows:
        starts.append(starts[-1] + len(r))
    return torch.tensor([t for r in rows for t in r]), starts


@pytest.mark.parametrize(("kind", "labels", "onednn"),
                         [("bert", 1, False), ("xlmr", 1, True), ("bert", 3, True)])
def test_cross_encoder_logits_match_transformers(kind: str, labels: int, onednn: bool,
                                                 tmp_path: Path) -> None:  # fmt: skip
    from sglang.srt.layers.onednn import available
    from transformers import AutoModelForSequenceClassification

    folder = _save(kind, tmp_path, labels)
    ours = _load(folder)
    ours.enable_onednn(onednn and available())
    assert ours.is_classifier and ours.num_labels == labels
    ref = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    pairs = [_pair(q, d) for q, d in PAIRS]
    ids, starts = _flat([p[0] for p in pairs])
    types, _ = _flat([p[1] for p in pairs])
    with torch.inference_mode():
        logits = ours.classify(ours(ids, starts, types), starts)
        for i, (pid, ptype) in enumerate(pairs):  # one at a time: no padding on their side
            kw = {"token_type_ids": torch.tensor([ptype])} if kind == "bert" else {}
            theirs = ref(torch.tensor([pid]), **kw).logits[0]
            torch.testing.assert_close(logits[i], theirs, atol=1e-4, rtol=0)
    spread = logits[:, 0].max() - logits[:, 0].min()
    assert spread > 1e-2  # the inputs give different scores: the comparison means something


def test_bert_token_types_change_the_score(tmp_path: Path) -> None:
    ours = _load(_save("bert", tmp_path, 1))
    ids, types = _pair(*PAIRS[0])
    x, starts = _flat([ids])
    with torch.inference_mode():
        with_types = ours.classify(ours(x, starts, torch.tensor(types)), starts)
        without = ours.classify(ours(x, starts), starts)
    assert not torch.allclose(with_types, without)


def test_xlm_roberta_encoder_matches_transformers(tmp_path: Path) -> None:
    from transformers import XLMRobertaModel

    folder = _save("xlmr_encoder", tmp_path, 1)
    ours = _load(folder)
    assert ours.max_positions == 64  # 66 positions, the first two reserved (padding id + 1)
    ref = XLMRobertaModel.from_pretrained(folder, dtype=torch.float32).eval()
    seqs = [[0, 5, 17, 99, 2], [0, 7, 2]]
    ids, starts = _flat(seqs)
    with torch.inference_mode():
        hidden = ours(ids, starts)
        for i, seq in enumerate(seqs):
            theirs = ref(torch.tensor([seq])).last_hidden_state[0]
            torch.testing.assert_close(hidden[starts[i] : starts[i + 1]], theirs,
                                       atol=1e-4, rtol=0)  # fmt: skip


def test_encoder_models_refuse_tensor_parallelism(tmp_path: Path) -> None:
    """Encoder (BERT-style) models are not sharded: --tp-size 2 fails at start, clearly, and
    the failed Engine leaves no open ZMQ context behind (one left open hung the next garbage
    collection, in the next test)."""
    import gc

    import sglang as sgl
    import zmq

    def contexts() -> dict[int, zmq.Context]:
        # type(), not isinstance(): a dead weak proxy among the objects raises on __class__
        return {id(o): o for o in gc.get_objects() if issubclass(type(o), zmq.Context)}

    before = contexts()
    folder = _save("bert", tmp_path, 1)
    with pytest.raises(RuntimeError, match="encoder embedding models .* --tp-size") as failed:
        sgl.Engine(model_path=str(folder), is_embedding=True, skip_tokenizer_init=True,
                   dtype="float32", tp_size=2, device="cpu")
    # (the traceback in ``failed`` keeps the failed engine client, and its context, reachable)
    new = [c for k, c in contexts().items() if k not in before]
    assert failed.traceback
    assert new and all(c.closed for c in new)
