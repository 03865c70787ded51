"""The Qwen2-VL vision transformer (issue 14, a building block not yet served): image patches ->
the language model's hidden size, as transformers' ``Qwen2VisionTransformerPretrainedModel``.

Input: the image processor's ``pixel_values`` [patches, C * T * P * P] (each row one temporal x
spatial patch, flattened) and ``grid_thw`` [images, 3] (patches per image along time, height and
width). Each patch is embedded by one matmul (the checkpoint's Conv3d, whose stride equals its
kernel, is a linear map of the flattened patch), gets 2-D rotary positions (its row and column in
the image, laid out by 2x2 merge blocks as the processor orders the patches), and runs through
pre-norm blocks that attend within their own image (frame); the merger then concatenates each 2x2
block of patches and projects it: [patches / 4, hidden]. Module and parameter names are the
checkpoint's (``visual.`` prefix stripped).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_ACTS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "silu": F.silu,
}


def vision_activation(name: str) -> Any:
    """The activation function of a vision MLP by its config name (ValueError if unknown)."""
    if name not in _ACTS:
        raise ValueError(f"Unsupported vision activation '{name}'; supported: {list(_ACTS)}")
    return _ACTS[name]


def _cfg(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def vision_positions(grid_thw: list[list[int]], merge: int) -> torch.Tensor:
    """(row, column) of every patch [patches, 2], in the processor's order: image by image,
    frame by frame, 2x2 merge block by block."""
    out = []
    for t, h, w in grid_thw:
        rows = torch.arange(h).view(h, 1).expand(h, w)
        cols = torch.arange(w).view(1, w).expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        rows = rows.reshape(block).transpose(1, 2).flatten()
        cols = cols.reshape(block).transpose(1, 2).flatten()
        out.append(torch.stack([rows, cols], dim=-1).repeat(t, 1))
    return torch.cat(out)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class VisionRotary(nn.Module):
    """Axial 2-D RoPE: a quarter of the head's frequencies for the row, a quarter for the column,
    repeated over both halves (no partial rotation)."""

    def __init__(self, head_dim: int, theta: float, device: Any = None) -> None:
        super().__init__()
        spatial = head_dim // 2
        steps = torch.arange(0, spatial, 2, dtype=torch.float32, device=device)
        inv = 1.0 / (theta ** (steps / spatial))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # [N, 2, head_dim / 4]
        angles = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)  # [N, head_dim]
        return angles.cos(), angles.sin()


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int, **kw: Any) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, **kw)
        self.proj = nn.Linear(dim, dim, **kw)

    def rotated_qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """q, k (rotated, in float32 then rounded back) and v, each [N, heads, head_dim]."""
        q, k, v = self.qkv(x).view(x.shape[0], 3, self.heads, self.head_dim).unbind(1)
        cos, sin = (r[:, None, :] for r in rope)
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(x.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(x.dtype)
        return q, k, v

    def forward(self, x: torch.Tensor, bounds: list[int],
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # fmt: skip
        q, k, v = self.rotated_qkv(x, rope)
        out = torch.empty_like(x)
        for a, b in itertools.pairwise(bounds):  # each image (frame) attends to itself only
            o = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)))
            out[a:b] = o.transpose(0, 1).reshape(b - a, -1)
        return self.proj(out)


class VisionMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, **kw: Any) -> None:
        super().__init__()
        self.act = vision_activation(act)
        self.fc1 = nn.Linear(dim, hidden, **kw)
        self.fc2 = nn.Linear(hidden, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, act: str, **kw: Any) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **kw)
        self.attn = VisionAttention(dim, heads, **kw)
        self.mlp = VisionMlp(dim, mlp_hidden, act, **kw)

    def forward(self, x: torch.Tensor, bounds: list[int],
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # fmt: skip
        x = x + self.attn(self.norm1(x), bounds, rope)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_dim: int, dim: int, **kw: Any) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim, bias=False, **kw)  # loaded from the Conv3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.to(self.proj.weight.dtype))


class PatchMerger(nn.Module):
    def __init__(self, out_dim: int, dim: int, merge: int, **kw: Any) -> None:
        super().__init__()
        self.width = dim * merge * merge
        self.ln_q = nn.LayerNorm(dim, eps=1e-6, **kw)
        self.mlp = nn.Sequential(nn.Linear(self.width, self.width, **kw), nn.GELU(),
                                 nn.Linear(self.width, out_dim, **kw))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.width))


class Qwen2VisionTransformer(nn.Module):
    """``forward(pixel_values, grid_thw)`` -> image embeddings [patches / merge^2, hidden]."""

    def __init__(self, vision_config: Any, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        dim = int(_cfg(vision_config, "embed_dim"))
        heads = int(_cfg(vision_config, "num_heads"))
        self.merge = int(_cfg(vision_config, "spatial_merge_size", 2))
        patch = int(_cfg(vision_config, "patch_size", 14))
        temporal = int(_cfg(vision_config, "temporal_patch_size", 2))
        channels = int(_cfg(vision_config, "in_channels", 3))
        rope = _cfg(vision_config, "rope_parameters") or {}
        theta = float(rope.get("rope_theta", 10000.0)) if isinstance(rope, dict) else 10000.0
        mlp_hidden = int(dim * float(_cfg(vision_config, "mlp_ratio", 4)))
        act = str(_cfg(vision_config, "hidden_act", "quick_gelu"))
        self.patch_embed = PatchEmbed(channels * temporal * patch * patch, dim, **kw)
        self.rotary = VisionRotary(dim // heads, theta, device)
        self.blocks = nn.ModuleList(VisionBlock(dim, heads, mlp_hidden, act, **kw)
                                    for _ in range(int(_cfg(vision_config, "depth"))))  # fmt: skip
        self.merger = PatchMerger(int(_cfg(vision_config, "hidden_size")), dim, self.merge, **kw)

    def forward(self, pixel_values: torch.Tensor, grid_thw: list[list[int]]) -> torch.Tensor:
        bounds = [0]
        for t, h, w in grid_thw:
            bounds += [bounds[-1] + h * w * (i + 1) for i in range(t)]
        if bounds[-1] != pixel_values.shape[0]:
            raise ValueError(f"grid_thw covers {bounds[-1]} patches, pixel_values has "
                             f"{pixel_values.shape[0]}")
        x = self.patch_embed(pixel_values)
        rope = self.rotary(vision_positions(grid_thw, self.merge).to(x.device))
        for block in self.blocks:
            x = block(x, bounds, rope)
        return self.merger(x)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint tensors named as transformers names the vision model (a ``visual.`` or
        ``model.visual.`` prefix is stripped); returns the parameter names filled."""
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            name = name.removeprefix("model.").removeprefix("visual.")
            if name not in params:
                continue
            param = params[name]
            if name == "patch_embed.proj.weight":
                tensor = tensor.reshape(tensor.shape[0], -1)  # the Conv3d kernel, flattened
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                                 f"model expects {tuple(param.shape)}")  # fmt: skip
            with torch.no_grad():
                param.copy_(tensor)
            loaded.add(name)
        return loaded
