"""Rotary position embedding (RoPE, NeoX / HF "rotate_half" layout) with a cos/sin cache.

The cache [max_positions, head_dim / 2] is computed once at model construction in float32, the
way HF computes it (default, linear and llama3 frequency scaling). Each forward pass looks up
the rows of its ``positions`` once (``lookup``) and every layer applies them to its q and k
(``apply``), so no trigonometry runs per step.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from sglang.srt.configs.model_config import RopeConfig


def compute_inv_freq(rope: RopeConfig, rotary_dim: int) -> torch.Tensor:
    """Inverse frequencies [rotary_dim / 2] in float32, matching transformers' rope init."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        return _llama3_scale(inv_freq, rope)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    old_ctx = rope.original_max_position_embeddings
    if old_ctx is None:
        raise ValueError("llama3 RoPE scaling needs original_max_position_embeddings")
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin cache; ``lookup(positions)`` then ``apply(x, cos_sin)`` per layer."""

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        rope: RopeConfig,
        *,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        inv_freq = compute_inv_freq(rope, head_dim)
        pos = torch.arange(max_positions, dtype=torch.int64).float()
        freqs = pos[:, None] * inv_freq[None, :]
        # Not registered as buffers: they are derived, never loaded, and need no state_dict entry.
        self.cos_cache = freqs.cos().to(dtype=dtype, device=device)
        self.sin_cache = freqs.sin().to(dtype=dtype, device=device)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self.cos_cache = fn(self.cos_cache)
        self.sin_cache = fn(self.sin_cache)
        return super()._apply(fn, recurse)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of shape [tokens, 1, head_dim / 2] for broadcasting over heads."""
        cos = self.cos_cache.index_select(0, positions).unsqueeze(1)
        sin = self.sin_cache.index_select(0, positions).unsqueeze(1)
        return cos, sin

    def lookup_multimodal(self, positions: torch.Tensor, sections: list[int]
                          ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Multimodal RoPE (Qwen2-VL): ``positions`` [3, tokens] (time, height, width); the
        first ``sections[0]`` frequencies rotate by the time position, the next ``sections[1]``
        by the height, the last ``sections[2]`` by the width. Same shapes as ``lookup``."""
        if sum(sections) != self.cos_cache.shape[1] or positions.shape[0] != len(sections):
            raise ValueError(f"mrope sections {sections} must cover the {self.cos_cache.shape[1]} "
                             f"frequencies, one per position axis ({positions.shape[0]})")
        bounds = [0, *itertools.accumulate(sections)]
        def pick(cache: torch.Tensor) -> torch.Tensor:
            parts = [cache.index_select(0, positions[i])[:, bounds[i] : bounds[i + 1]]
                     for i in range(len(sections))]  # fmt: skip
            return torch.cat(parts, dim=-1).unsqueeze(1)

        return pick(self.cos_cache), pick(self.sin_cache)

    @staticmethod
    def apply(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate ``x`` [tokens, heads, head_dim] (any strides); returns a new contiguous tensor."""
        cos, sin = cos_sin
        half = x.shape[-1] // 2
        x1 = x[..., :half]
        x2 = x[..., half:]
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        # HF: x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), written per half.
        torch.mul(x1, cos, out=out[..., :half]).sub_(x2 * sin)
        torch.mul(x2, cos, out=out[..., half:]).add_(x1 * sin)
        return out
