"""BERT-family encoder (``BertModel``: all-MiniLM-L6-v2, bge, e5, ...) for embeddings.

An encoder attends in both directions, so its requests share no KV cache and no prefix: each
batch is a set of whole sequences. ``forward(input_ids, starts, token_type_ids)`` takes the flat
token rows of the batch (request i owns rows ``starts[i]..starts[i+1]-1``, positions restart at 0
per request), pads them once into [requests, longest, hidden] with a key-padding mask for every
layer (as sentence-transformers does), and returns the flat [tokens, hidden] last hidden states;
``layers.pooler`` turns them into one vector per request. Module and parameter names are the HF
checkpoint's (a ``bert.`` prefix, as in ``BertFor*`` checkpoints, is accepted).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.configs.model_config import ModelConfig

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _hf(config: ModelConfig) -> dict[str, Any]:
    hf = config.hf_config
    return hf.to_dict() if hasattr(hf, "to_dict") else dict(hf or {})


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
        self.query = nn.Linear(hidden, hidden, **kw)
        self.key = nn.Linear(hidden, hidden, **kw)
        self.value = nn.Linear(hidden, hidden, **kw)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=mask,
            scale=1.0 / math.sqrt(self.head_dim),
        )  # fmt: skip
        return out.transpose(1, 2).reshape(b, n, -1)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float, **kw: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, hidden, **kw)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps, **kw)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: ModelConfig, eps: float, **kw: Any) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, **kw)
        self.output = BertSelfOutput(config.hidden_size, config.hidden_size, eps, **kw)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: ModelConfig, act: str, **kw: Any) -> None:
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"Unsupported BERT activation '{act}'; supported: {list(_ACTIVATIONS)}"
            )
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size, **kw)
        self.act = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: ModelConfig, hf: dict[str, Any], **kw: Any) -> None:
        super().__init__()
        eps = float(hf.get("layer_norm_eps", 1e-12))
        self.attention = BertAttention(config, eps, **kw)
        self.intermediate = BertIntermediate(config, str(hf.get("hidden_act", "gelu")), **kw)
        self.output = BertSelfOutput(config.hidden_size, config.intermediate_size, eps, **kw)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: ModelConfig, hf: dict[str, Any], **kw: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, hf, **kw)
                                   for _ in range(config.num_hidden_layers))  # fmt: skip


class BertModel(nn.Module):
    """The encoder; ``forward`` -> flat last hidden states [tokens, hidden]."""

    is_encoder = True  # no causal mask, no KV cache, no prefix sharing

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
        self.max_positions = int(hf.get("max_position_embeddings", 512))
        self.embeddings = BertEmbeddings(config, hf, **kw)
        self.encoder = BertEncoder(config, hf, **kw)

    def forward(
        self,
        input_ids: torch.Tensor,
        starts: list[int],
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lengths = [b - a for a, b in itertools.pairwise(starts)]
        if max(lengths, default=0) > self.max_positions:
            raise ValueError(f"a sequence is longer than the model's {self.max_positions} tokens")
        device = input_ids.device
        bs, longest = len(lengths), max(lengths, default=0)
        cols = torch.arange(longest, device=device)
        lens = torch.tensor(lengths, device=device)
        valid = cols[None, :] < lens[:, None]  # [B, L]
        rows = torch.tensor(starts[:-1], device=device)[:, None] + cols[None, :]
        rows = torch.where(valid, rows, 0)
        ids = input_ids[rows]
        types = torch.zeros_like(ids) if token_type_ids is None else token_type_ids[rows]
        x = self.embeddings(ids, cols.expand(bs, longest), types)
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x[valid]  # back to the flat rows, in request order

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("bert.")
            if name.startswith("pooler.") or name == "embeddings.position_ids":
                continue  # the pooler head is unused by sentence embeddings
            if name not in params:
                continue  # heads of other BertFor* classes
            param = params[name]
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                                 f"model expects {tuple(param.shape)}")  # fmt: skip
            with torch.no_grad():
                param.copy_(tensor)
            loaded.add(name)
        return loaded
