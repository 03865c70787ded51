"""The Qwen2.5-VL vision transformer (issue 14, a building block not yet served): image patches ->
the language model's hidden size, as transformers' ``Qwen2_5_VisionTransformerPretrainedModel``.

Input and output as the Qwen2-VL tower (``qwen2_vl_vision``): ``pixel_values`` [patches,
C * T * P * P] and ``grid_thw`` [images, 3] in, [patches / merge^2, out_hidden_size] out. The
patch embedding, the 2-D rotary positions and the per-segment attention are that tower's; what
differs: RMSNorm (not LayerNorm) before attention, MLP and merger, a gated SiLU MLP
(``down(act(gate(x)) * up(x))``, with biases), and window attention. The 2x2 merge blocks of each
frame are cut into windows of ``window_size / patch_size / merge`` blocks a side (the last row and
column of windows hold what is left when the grid does not divide evenly); the patches are
reordered window by window (row-major within a window), the blocks listed in
``fullatt_block_indexes`` attend over the whole frame and all others within their window, and the
merger's outputs are put back in the processor's order. Module and parameter names are the
checkpoint's (``visual.`` prefix stripped).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.models.qwen2_vl_vision import (
    PatchEmbed,
    PatchMerger,
    Qwen2VisionTransformer,
    VisionAttention,
    VisionRotary,
    _cfg,
    vision_activation,
    vision_positions,
)


def window_order(
    grid_thw: list[list[int]], merge: int, window: int
) -> tuple[torch.Tensor, list[int]]:
    """The window partition: (the merge blocks' order [patches / merge^2], window by window, as
    indices into the processor's order; the window lengths in patches). ``window`` is the side of
    a window in merge blocks; windows at the bottom and right edge may be smaller."""
    order, lengths, offset = [], [], 0
    for t, h, w in grid_thw:
        gh, gw = h // merge, w // merge
        nh, nw = -(-gh // window), -(-gw // window)  # windows per column and row (ceil)
        rows = torch.arange(gh).view(1, gh, 1)
        cols = torch.arange(gw).view(1, 1, gw)
        frames = torch.arange(t).view(t, 1, 1)
        win = (frames * nh + rows // window) * nw + cols // window  # window of each block
        key = (win * window + rows % window) * window + cols % window  # row-major inside
        order.append(torch.argsort(key.flatten()) + offset)
        counts = torch.bincount(win.flatten(), minlength=t * nh * nw)
        lengths += (counts[counts > 0] * merge * merge).tolist()
        offset += t * gh * gw
    return torch.cat(order), lengths


def segment_groups(lengths: list[int], device: Any = None) -> list[torch.Tensor]:
    """Contiguous segments of these lengths grouped by length: one [segments, length] index
    tensor per distinct length, so that each group attends in one batched SDPA call."""
    sizes = torch.tensor(lengths)
    starts = torch.cumsum(sizes, 0) - sizes
    groups = []
    for n in torch.unique(sizes).tolist():
        idx = starts[sizes == n][:, None] + torch.arange(n)
        groups.append(idx.to(device))
    return groups


class WindowAttention(VisionAttention):
    """The Qwen2-VL tower's attention over segments given as ``segment_groups`` (frames or
    windows): equal-length segments are stacked into one SDPA batch."""

    def forward(self, x: torch.Tensor, groups: list[torch.Tensor],  # type: ignore[override]
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # fmt: skip
        q, k, v = self.rotated_qkv(x, rope)
        out = torch.empty_like(x)
        for idx in groups:  # [segments, length]: each segment attends to itself only
            o = F.scaled_dot_product_attention(*(t[idx].transpose(1, 2) for t in (q, k, v)))
            out[idx] = o.transpose(1, 2).reshape(*idx.shape, -1)
        return self.proj(out)


class GatedMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, **kw: Any) -> None:
        super().__init__()
        self.act = vision_activation(act)
        self.gate_proj = nn.Linear(dim, hidden, **kw)
        self.up_proj = nn.Linear(dim, hidden, **kw)
        self.down_proj = nn.Linear(hidden, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, act: str, **kw: Any) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=1e-6, **kw)
        self.norm2 = RMSNorm(dim, eps=1e-6, **kw)
        self.attn = WindowAttention(dim, heads, **kw)
        self.mlp = GatedMlp(dim, mlp_hidden, act, **kw)

    def forward(self, x: torch.Tensor, groups: list[torch.Tensor],
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # fmt: skip
        x = x + self.attn(self.norm1(x), groups, rope)
        return x + self.mlp(self.norm2(x))


class RMSPatchMerger(PatchMerger):
    """The Qwen2-VL merger with an RMSNorm ``ln_q``."""

    def __init__(self, out_dim: int, dim: int, merge: int, **kw: Any) -> None:
        super().__init__(out_dim, dim, merge, **kw)
        self.ln_q = RMSNorm(dim, eps=1e-6, **kw)


class Qwen2_5_VisionTransformer(nn.Module):
    """``forward(pixel_values, grid_thw)`` -> image embeddings [patches / merge^2,
    out_hidden_size]."""

    def __init__(self, config: Any, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        dim = int(_cfg(config, "hidden_size"))
        heads = int(_cfg(config, "num_heads"))
        self.merge = int(_cfg(config, "spatial_merge_size", 2))
        patch = int(_cfg(config, "patch_size", 14))
        temporal = int(_cfg(config, "temporal_patch_size", 2))
        channels = int(_cfg(config, "in_channels", _cfg(config, "in_chans", 3)))  # config.json
        self.window = int(_cfg(config, "window_size", 112)) // self.merge // patch
        if self.window < 1:
            raise ValueError(f"window_size must be at least patch_size * spatial_merge_size "
                             f"({patch * self.merge})")  # fmt: skip
        self.full_blocks = {int(i) for i in _cfg(config, "fullatt_block_indexes", ()) or ()}
        rope = _cfg(config, "rope_parameters") or {}
        theta = float(rope.get("rope_theta", 10000.0)) if isinstance(rope, dict) else 10000.0
        act = str(_cfg(config, "hidden_act", "silu"))
        mlp_hidden = int(_cfg(config, "intermediate_size"))
        self.patch_embed = PatchEmbed(channels * temporal * patch * patch, dim, **kw)
        self.rotary = VisionRotary(dim // heads, theta, device)
        self.blocks = nn.ModuleList(VisionBlock(dim, heads, mlp_hidden, act, **kw)
                                    for _ in range(int(_cfg(config, "depth"))))  # fmt: skip
        self.merger = RMSPatchMerger(int(_cfg(config, "out_hidden_size")), dim, self.merge, **kw)

    def forward(self, pixel_values: torch.Tensor, grid_thw: list[list[int]]) -> torch.Tensor:
        frames = [h * w for t, h, w in grid_thw for _ in range(t)]
        if sum(frames) != pixel_values.shape[0]:
            raise ValueError(f"grid_thw covers {sum(frames)} patches, pixel_values has "
                             f"{pixel_values.shape[0]}")  # fmt: skip
        unit = self.merge * self.merge
        order, windows = window_order(grid_thw, self.merge, self.window)
        positions = vision_positions(grid_thw, self.merge).view(-1, unit, 2)[order]
        x = self.patch_embed(pixel_values)
        order = order.to(x.device)
        x = x.view(-1, unit, x.shape[-1])[order].flatten(0, 1)  # window by window
        rope = self.rotary(positions.flatten(0, 1).to(x.device))
        full = segment_groups(frames, x.device)  # the order keeps every frame contiguous
        windowed = segment_groups(windows, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, full if i in self.full_blocks else windowed, rope)
        return self.merger(x)[torch.argsort(order)]

    load_weights = Qwen2VisionTransformer.load_weights
