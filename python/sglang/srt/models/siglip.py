"""The SigLIP vision transformer (transformers' ``SiglipVisionModel``, no pooling head), as the
vision tower of LLaVA-style models.

``forward(pixel_values [n, C, H, W], feature_layer)`` embeds each image's non-overlapping
``patch_size`` patches (the checkpoint's Conv2d with stride = kernel), adds the learned position
embedding (one per patch, no class token, no interpolation: H = W = ``image_size``) and runs
pre-norm encoder layers (LayerNorm -> multi-head attention with biased q/k/v/out projections over
all the image's patches -> residual; LayerNorm -> fc1 -> ``hidden_act`` -> fc2 -> residual). It
returns what LLaVA reads from transformers' ``hidden_states`` tuple (the embeddings, then each
layer's output; ``post_layernorm`` is not applied there): ``hidden_states[feature_layer]``
[n, patches, hidden], several such indices concatenated on the last dimension, or, with
``feature_layer=None``, the post-normed last layer (transformers' ``last_hidden_state``). Only the
layers the selection needs are run. Parameter names are transformers' (``vision_model.``
``embeddings.patch_embedding``, ``encoder.layers.N.self_attn.q_proj``, ``post_layernorm``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
}

# transformers' SiglipVisionConfig defaults (a config.json may omit them)
_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}


def cfg(config: Any, name: str, default: Any = None) -> Any:
    """``config.name`` for a config object or ``config[name]`` for a dict, else ``default``."""
    value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
    return default if value is None else value


def activation(name: str) -> Any:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unsupported activation '{name}'; supported: {list(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, dim: int, channels: int, image: int, patch: int, **kw: Any) -> None:
        super().__init__()
        self.image_size = image
        self.patch_embedding = nn.Conv2d(channels, dim, patch, stride=patch, **kw)
        self.position_embedding = nn.Embedding((image // patch) ** 2, dim, **kw)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"SigLIP expects {self.image_size}x{self.image_size} pixels, got "
                             f"{tuple(pixel_values.shape[-2:])}")  # fmt: skip
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        return x.flatten(2).transpose(1, 2) + self.position_embedding.weight


class SiglipAttention(nn.Module):
    def __init__(self, dim: int, heads: int, **kw: Any) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_size {dim} is not a multiple of num_attention_heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, **kw)
        self.k_proj = nn.Linear(dim, dim, **kw)
        self.v_proj = nn.Linear(dim, dim, **kw)
        self.out_proj = nn.Linear(dim, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, seq, dim = x.shape
        q, k, v = (p(x).view(n, seq, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # fmt: skip
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))
        return self.out_proj(out.transpose(1, 2).reshape(n, seq, dim))


class SiglipMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, **kw: Any) -> None:
        super().__init__()
        self.act = activation(act)
        self.fc1 = nn.Linear(dim, hidden, **kw)
        self.fc2 = nn.Linear(hidden, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, act: str, eps: float,
                 **kw: Any) -> None:  # fmt: skip
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps, **kw)
        self.self_attn = SiglipAttention(dim, heads, **kw)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps, **kw)
        self.mlp = SiglipMLP(dim, hidden, act, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, layers: Iterable[SiglipEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: Any, **kw: Any) -> None:
        super().__init__()
        c = {name: cfg(config, name, default) for name, default in _DEFAULTS.items()}
        dim, eps = int(c["hidden_size"]), float(c["layer_norm_eps"])
        self.embeddings = SiglipVisionEmbeddings(dim, int(c["num_channels"]),
                                                 int(c["image_size"]), int(c["patch_size"]),
                                                 **kw)  # fmt: skip
        self.encoder = SiglipEncoder(
            SiglipEncoderLayer(dim, int(c["num_attention_heads"]), int(c["intermediate_size"]),
                               str(c["hidden_act"]), eps, **kw)
            for _ in range(int(c["num_hidden_layers"])))  # fmt: skip
        self.post_layernorm = nn.LayerNorm(dim, eps=eps, **kw)


class SiglipVisionModel(nn.Module):
    """``forward(pixel_values, feature_layer)`` -> the selected hidden states (module docstring).
    ``config``: a ``SiglipVisionConfig`` or its dict (missing fields take transformers'
    defaults)."""

    def __init__(self, config: Any, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__()
        self.vision_model = SiglipVisionTransformer(config, dtype=dtype, device=device)

    @property
    def num_layers(self) -> int:
        return len(self.vision_model.encoder.layers)

    def _index(self, layer: int) -> int:
        """A ``hidden_states`` index (negative counts from the end) as 0..num_layers."""
        total = self.num_layers + 1
        if not -total <= layer < total:
            raise ValueError(f"feature layer {layer} out of range for {self.num_layers} layers")
        return layer % total

    def forward(self, pixel_values: torch.Tensor,
                feature_layer: int | Sequence[int] | None = -1) -> torch.Tensor:  # fmt: skip
        vm = self.vision_model
        if feature_layer is None:
            wanted = [self.num_layers]
        elif isinstance(feature_layer, int):
            wanted = [self._index(feature_layer)]
        else:
            wanted = [self._index(layer) for layer in feature_layer]
        x = vm.embeddings(pixel_values)
        kept = {0: x} if 0 in wanted else {}
        for i, layer in enumerate(vm.encoder.layers[: max(wanted)], start=1):
            x = layer(x)
            if i in wanted:
                kept[i] = x
        if feature_layer is None:
            return vm.post_layernorm(x)
        return torch.cat([kept[i] for i in wanted], dim=-1) if len(wanted) > 1 else x

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Tensors named as transformers' ``SiglipVisionModel`` (with or without the
        ``vision_model.`` prefix, as transformers 5 names it inside LLaVA); others (the pooling
        ``head``) are skipped. Returns the parameter names filled."""
        return load_into(self, ((name if name.startswith("vision_model.") else
                                 f"vision_model.{name}", t) for name, t in weights))  # fmt: skip


def load_into(module: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Copies each named tensor into ``module``'s parameter of that name (shape-checked); names
    it does not have are skipped. Returns the names filled."""
    params = dict(module.named_parameters())
    loaded = set()
    for name, tensor in weights:
        param = params.get(name)
        if param is None:
            continue
        if param.shape != tensor.shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, model expects "
                             f"{tuple(param.shape)}")  # fmt: skip
        with torch.no_grad():
            param.copy_(tensor)
        loaded.add(name)
    return loaded
