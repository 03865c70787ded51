"""BERT-family encoder (``BertModel``: all-MiniLM-L6-v2, bge, e5, ...) for embeddings.

An encoder attends in both directions, so its requests share no KV cache and no prefix: each
batch is a set of whole sequences. ``forward(input_ids, starts, token_type_ids)`` takes the flat
token rows of the batch (request i owns rows ``starts[i]..starts[i+1]-1``, positions restart at 0
per request), runs the embeddings, projections and MLPs on those flat rows (no padding: a batch of
mixed lengths costs its real token count) and pads only inside attention ([requests, longest]
with a key-padding mask, ``Packing``); it returns the flat [tokens, hidden] last hidden states;
``layers.pooler`` turns them into one vector per request. Module and parameter names are the HF
checkpoint's (a ``bert.`` prefix, as in ``BertFor*`` checkpoints, is accepted).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers import onednn

QKV_SHARDS = ("query", "key", "value")

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _hf(config: ModelConfig) -> dict[str, Any]:
    hf = config.hf_config
    return hf.to_dict() if hasattr(hf, "to_dict") else dict(hf or {})


# A group of requests padded together wastes at most this share of its attention rows.
MAX_PADDING_WASTE = 0.25


@dataclass(frozen=True)
class AttnGroup:
    """Requests padded together for attention: ``rows`` [n, longest] (the flat row of each
    padded position, 0 for padding), ``valid``, the key-padding ``mask`` (None when all have the
    longest length) and ``flat``, the flat rows of the valid positions in row-major order."""

    rows: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor | None
    flat: torch.Tensor


@dataclass(frozen=True)
class Packing:
    """How a batch's flat token rows map onto padded attention inputs: the requests sorted by
    length and cut into groups that waste little padding (``MAX_PADDING_WASTE``), so mixed
    lengths cost about their real token count in attention too; ``positions`` is each flat row's
    position inside its request."""

    groups: list[AttnGroup]
    positions: torch.Tensor
    num_tokens: int

    @classmethod
    def of(cls, lengths: list[int], starts: list[int], device: torch.device) -> Packing:
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        groups, current, real = [], [], 0
        for i in order:  # ascending: the newest member is the group's longest
            if current and lengths[i] * (len(current) + 1) > (1 + MAX_PADDING_WASTE) * (
                real + lengths[i]
            ):
                groups.append(current)
                current, real = [], 0
            current.append(i)
            real += lengths[i]
        if current:
            groups.append(current)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths]) if lengths else (
            torch.zeros(0, dtype=torch.long, device=device)
        )  # fmt: skip
        return cls([_group(g, lengths, starts, device) for g in groups], positions, starts[-1])


def _group(members: list[int], lengths: list[int], starts: list[int], device: torch.device
           ) -> AttnGroup:  # fmt: skip
    cols = torch.arange(max(lengths[i] for i in members), device=device)
    lens = torch.tensor([lengths[i] for i in members], device=device)
    valid = cols[None, :] < lens[:, None]
    first = torch.tensor([starts[i] for i in members], device=device)
    rows = torch.where(valid, first[:, None] + cols[None, :], 0)
    mask = None if bool(valid.all()) else valid[:, None, None, :]
    return AttnGroup(rows, valid, mask, rows[valid])


def _dense(layer: nn.Linear, x: torch.Tensor, post: str = "none",
           residual: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """A projection (+ exact GELU or a residual add): oneDNN with the epilogue fused when the
    model turned it on (``BertModel.use_onednn``, measured at load), else ``F.linear``."""
    fn = onednn.linear if getattr(layer, "use_onednn", False) else onednn.reference
    return fn(x, layer.weight, layer.bias, post, residual)


class BertEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig, hf: dict[str, Any], **kw: Any) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden, **kw)
        self.position_embeddings = nn.Embedding(int(hf.get("max_position_embeddings", 512)),
                                                hidden, **kw)  # fmt: skip
        self.token_type_embeddings = nn.Embedding(int(hf.get("type_vocab_size", 2)), hidden, **kw)
        self.LayerNorm = nn.LayerNorm(hidden, eps=float(hf.get("layer_norm_eps", 1e-12)), **kw)

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, token_types: torch.Tensor
    ) -> torch.Tensor:
        x = self.word_embeddings(ids) + self.token_type_embeddings(token_types)
        return self.LayerNorm(x + self.position_embeddings(positions))


class BertSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, **kw: Any) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        # query, key and value in one matmul (the checkpoint's three are stacked at load)
        self.qkv = nn.Linear(hidden, 3 * hidden, **kw)

    def forward(self, x: torch.Tensor, pack: Packing) -> torch.Tensor:
        """Flat rows [tokens, hidden] in and out; only the attention itself is padded, per
        group of similar lengths."""
        qkv = _dense(self.qkv, x)
        out = torch.empty((x.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
        for g in pack.groups:
            b, n = g.rows.shape
            # one gather per group; [b, n, 3, heads, head_dim] -> q, k, v as [b, heads, n, d]
            q, k, v = qkv[g.rows].view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=g.mask,
                scale=1.0 / math.sqrt(self.head_dim),
            )  # fmt: skip
            out[g.flat] = o.transpose(1, 2).reshape(b, n, -1)[g.valid]
        return out


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float, **kw: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, hidden, **kw)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps, **kw)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(_dense(self.dense, x, "add", residual))


class BertAttention(nn.Module):
    def __init__(self, config: ModelConfig, eps: float, **kw: Any) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, **kw)
        self.output = BertSelfOutput(config.hidden_size, config.hidden_size, eps, **kw)

    def forward(self, x: torch.Tensor, pack: Packing) -> torch.Tensor:
        return self.output(self.self(x, pack), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: ModelConfig, act: str, **kw: Any) -> None:
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"Unsupported BERT activation '{act}'; supported: {list(_ACTIVATIONS)}"
            )
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size, **kw)
        self.act = _ACTIVATIONS[act]
        self.exact_gelu = act == "gelu"  # fusable into oneDNN's GEMM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact_gelu:
            return _dense(self.dense, x, "gelu")
        return self.act(_dense(self.dense, x))


class BertLayer(nn.Module):
    def __init__(self, config: ModelConfig, hf: dict[str, Any], **kw: Any) -> None:
        super().__init__()
        eps = float(hf.get("layer_norm_eps", 1e-12))
        self.attention = BertAttention(config, eps, **kw)
        self.intermediate = BertIntermediate(config, str(hf.get("hidden_act", "gelu")), **kw)
        self.output = BertSelfOutput(config.hidden_size, config.intermediate_size, eps, **kw)

    def forward(self, x: torch.Tensor, pack: Packing) -> torch.Tensor:
        x = self.attention(x, pack)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: ModelConfig, hf: dict[str, Any], **kw: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, hf, **kw)
                                   for _ in range(config.num_hidden_layers))  # fmt: skip


class BertModel(nn.Module):
    """The encoder; ``forward`` -> flat last hidden states [tokens, hidden]."""

    is_encoder = True  # no causal mask, no KV cache, no prefix sharing
    checkpoint_prefix = "bert."  # of the encoder's tensors in BertFor* checkpoints

    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        hf = _hf(config)
        kw = {"dtype": dtype or config.dtype, "device": device}
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported for BERT models")
        # Position ids start at ``position_offset`` (RoBERTa-style models: after the padding id).
        self.position_offset = self.first_position(hf)
        self.max_positions = int(hf.get("max_position_embeddings", 512)) - self.position_offset
        # Token types (a cross-encoder's second segment) only when the model has them.
        self.has_token_types = int(hf.get("type_vocab_size", 2)) > 1
        self.embeddings = BertEmbeddings(config, hf, **kw)
        self.encoder = BertEncoder(config, hf, **kw)

    @staticmethod
    def first_position(hf: dict[str, Any]) -> int:
        return 0

    def enable_onednn(self, on: bool = True) -> None:
        """Run the encoder's projections through oneDNN (``layers.onednn``), epilogues fused."""
        for layer in self.encoder.layer:
            for dense in (layer.attention.self.qkv, layer.attention.output.dense,
                          layer.intermediate.dense, layer.output.dense):  # fmt: skip
                dense.use_onednn = on and dense.weight.device.type == "cpu"

    def forward(
        self,
        input_ids: torch.Tensor,
        starts: list[int],
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lengths = [b - a for a, b in itertools.pairwise(starts)]
        if max(lengths, default=0) > self.max_positions:
            raise ValueError(f"a sequence is longer than the model's {self.max_positions} tokens")
        pack = Packing.of(lengths, starts, input_ids.device)
        positions = pack.positions + self.position_offset
        if token_type_ids is None or not self.has_token_types:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, positions, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, pack)
        return x

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        shards: dict[str, set[str]] = {}
        for name, tensor in weights:
            name = name.removeprefix(self.checkpoint_prefix)
            if name == "embeddings.position_ids" or (
                name.startswith("pooler.") and "pooler.dense.weight" not in params
            ):
                continue  # the pooler head is unused by sentence embeddings
            target, rows = name, None
            for i, proj in enumerate(QKV_SHARDS):
                if f".self.{proj}." in name:
                    target = name.replace(f".self.{proj}.", ".self.qkv.")
                    rows = i
            if target not in params:
                continue  # heads of other BertFor* classes
            param = params[target].data
            if rows is not None:
                param = param.narrow(0, rows * tensor.shape[0], tensor.shape[0])
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                                 f"model expects {tuple(param.shape)}")  # fmt: skip
            with torch.no_grad():
                param.copy_(tensor)
            if rows is None:
                loaded.add(target)
            else:
                shards.setdefault(target, set()).add(QKV_SHARDS[rows])
        loaded.update(t for t, got in shards.items() if got == set(QKV_SHARDS))
        return loaded


class XLMRobertaModel(BertModel):
    """XLM-RoBERTa / RoBERTa encoders (bge-m3, multilingual-e5): BERT layers, positions counted
    from ``pad_token_id + 1``, no token types."""

    checkpoint_prefix = "roberta."

    @staticmethod
    def first_position(hf: dict[str, Any]) -> int:
        return int(hf.get("pad_token_id", 1)) + 1
