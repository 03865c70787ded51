"""The vision side of LLaVA-OneVision (transformers' ``LlavaOnevisionForConditionalGeneration``):
images -> the embeddings that replace each image's ``<image>`` tokens in the prompt.

Input: the image processor's outputs. An image alone in its prompt is *anyres*-tiled: the
processor resizes it (keeping its aspect ratio) into the best of ``image_grid_pinpoints``, pads it
there (centred) and cuts it into ``image_size`` tiles, after one tile of the whole image resized
(the base); ``pixel_values`` [images, max tiles, 3, S, S] is zero-padded to the largest tile
count, ``image_sizes`` [images, 2] holds each original (height, width). Images of a multi-image
prompt (``batch_num_images`` > 1) are one padded-to-square tile each.

Per image: the SigLIP tower runs on its real tiles (``vision_tower``, ``siglip.py``), the hidden
states of ``vision_feature_layer`` are taken (``"default"`` strategy: minus the first token),
``multi_modal_projector`` maps them to the text hidden size (linear_1, act, linear_2). The base
tile's side x side grid comes first, unchanged. The other tiles are put together into one
(rows * side) x (cols * side) feature grid, the padding rows/columns (the processor's centred
padding) are cut away, the grid is bilinearly shrunk when it holds more than 1.1^2 times
``anyres_max_N``'s N tiles' worth of features (``vision_aspect_ratio``), and each row ends with
the learned ``image_newline``; row-major. A single-tile image is its tile then one
``image_newline``. ``num_image_tokens`` gives that length from the original size, as the
processor counts the ``<image>`` tokens, so the prompt can be expanded before the tower runs.
Module and parameter names are transformers' (``vision_tower.vision_model.*``,
``multi_modal_projector.linear_1``, ``image_newline``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.models.siglip import SiglipVisionModel, activation, cfg, load_into

# transformers' LlavaOnevisionConfig defaults
_VISION_DEFAULTS = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "patch_size": 14,
    "image_size": 384,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
}
_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]


@dataclass(frozen=True)
class _Settings:
    image_size: int  # tile side in pixels
    side: int  # tile side in features (image_size // patch_size)
    pinpoints: list[list[int]]
    max_tiles: int  # the N of anyres_max_N
    strategy: str
    feature_layer: int | list[int]


def _vision_config(config: Any) -> Any:
    vision = cfg(config, "vision_config")
    return dict(_VISION_DEFAULTS) if vision is None else vision


def _settings(config: Any) -> _Settings:
    vision = _vision_config(config)
    image = int(cfg(vision, "image_size", 224))
    aspect = str(cfg(config, "vision_aspect_ratio", "anyres_max_9"))
    if not aspect.startswith("anyres_max_") or not aspect[11:].isdigit():
        raise ValueError(f"vision_aspect_ratio '{aspect}' is not of the form anyres_max_N")
    strategy = str(cfg(config, "vision_feature_select_strategy", "full"))
    if strategy not in ("default", "full"):
        raise ValueError(f"Unknown vision_feature_select_strategy '{strategy}'")
    layer = cfg(config, "vision_feature_layer", -1)
    pinpoints = cfg(config, "image_grid_pinpoints", _PINPOINTS)
    return _Settings(image, image // int(cfg(vision, "patch_size", 16)),
                     [[int(h), int(w)] for h, w in pinpoints], int(aspect[11:]), strategy,
                     layer if isinstance(layer, int) else [int(i) for i in layer])  # fmt: skip


def select_best_resolution(height: int, width: int, pinpoints: list[list[int]]) -> tuple[int, int]:
    """The (height, width) pinpoint that keeps most of the image's pixels when it is resized into
    it (aspect kept), ties to the least padding; transformers' ``select_best_resolution``."""
    best, most, least = None, 0, math.inf
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - kept
        if kept > most or (kept == most and wasted < least):
            best, most, least = (h, w), kept, wasted
    assert best is not None, "image_grid_pinpoints is empty"
    return best


def _num_tiles(s: _Settings, height: int, width: int) -> int:
    """Tiles of an anyres image: the base plus one per image_size square of its pinpoint."""
    h, w = select_best_resolution(height, width, s.pinpoints)
    return math.ceil(h / s.image_size) * math.ceil(w / s.image_size) + 1


def _unpad_box(height: int, width: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the rows x cols feature grid that the image (not the
    processor's centred padding) covers."""
    if width / height > cols / rows:
        pad = (rows - int(round(height * (cols / width), 7))) // 2
        return pad, rows - pad, 0, cols
    pad = (cols - int(round(width * (rows / height), 7))) // 2
    return 0, rows, pad, cols - pad


def _grid(s: _Settings, height: int, width: int) -> tuple[int, int, tuple[int, ...], Any]:
    """Tile rows and columns of an anyres image, its unpad box, and the (rows, cols) it is
    shrunk to (None when it is not)."""
    best_h, best_w = select_best_resolution(height, width, s.pinpoints)
    rows, cols = best_h // s.image_size, best_w // s.image_size
    box = _unpad_box(height, width, rows * s.side, cols * s.side)
    h, w = box[1] - box[0], box[3] - box[2]
    ratio = math.sqrt(h * w / (s.max_tiles * s.side**2))
    return rows, cols, box, (int(h // ratio), int(w // ratio)) if ratio > 1.1 else None


def num_image_tokens(config: Any, height: int, width: int, *, multi_image: bool = False) -> int:
    """``<image>`` tokens one image of original size height x width expands to (what
    ``LlavaOnevisionProcessor`` inserts); ``multi_image``: the image shares its prompt with
    others (one tile, no anyres)."""
    s = _settings(config)
    if multi_image:
        n = s.side**2 + 1
    else:
        _, _, box, shrunk = _grid(s, height, width)
        h, w = shrunk or (box[1] - box[0], box[3] - box[2])
        n = s.side**2 + h * (w + 1)
    return n - 1 if s.strategy == "default" else n


class LlavaOnevisionMultiModalProjector(nn.Module):
    def __init__(self, dim: int, text: int, act: str, bias: bool, **kw: Any) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, text, bias=bias, **kw)
        self.act = activation(act)
        self.linear_2 = nn.Linear(text, text, bias=bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def _ints(values: Any) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


class LlavaOnevisionVision(nn.Module):
    """``forward(pixel_values, image_sizes)`` -> per image its packed embeddings
    [tokens_i, text hidden] (module docstring). ``config``: a ``LlavaOnevisionConfig`` or its
    dict."""

    def __init__(self, config: Any, *, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:  # fmt: skip
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.settings = _settings(config)
        vision = _vision_config(config)
        if cfg(vision, "model_type", "siglip_vision_model") != "siglip_vision_model":
            raise ValueError(f"Unsupported vision tower '{cfg(vision, 'model_type')}'")
        text = int(cfg(cfg(config, "text_config", {}), "hidden_size", 4096))
        layers = self.settings.feature_layer
        width = int(cfg(vision, "hidden_size", 768)) * (1 if isinstance(layers, int) else
                                                        len(layers))  # fmt: skip
        self.vision_tower = SiglipVisionModel(vision, **kw)
        self.multi_modal_projector = LlavaOnevisionMultiModalProjector(
            width, text, str(cfg(config, "projector_hidden_act", "gelu")),
            bool(cfg(config, "multimodal_projector_bias", True)), **kw)  # fmt: skip
        self.image_newline = nn.Parameter(torch.zeros(text, **kw))

    def forward(self, pixel_values: torch.Tensor | Sequence[torch.Tensor], image_sizes: Any,
                batch_num_images: Any = None, alone: Sequence[bool] | None = None
                ) -> list[torch.Tensor]:  # fmt: skip
        """``pixel_values``: [images, max tiles, C, S, S] (or a list of [tiles, C, S, S], or
        the real tiles already concatenated [tiles, C, S, S]); ``image_sizes``: [images, 2]
        original (height, width); ``batch_num_images``: images per prompt (None: each alone, as
        transformers assumes); or ``alone``: per image, whether it is its prompt's only image
        (the server's per-image calls)."""
        s = self.settings
        sizes = [(int(h), int(w)) for h, w in _ints(image_sizes)]
        alone = [True] * len(sizes) if alone is None else list(alone)
        if batch_num_images is not None:
            alone = [n == 1 for n in _ints(batch_num_images) for _ in range(n)]
        if len(alone) != len(sizes):
            raise ValueError(f"batch_num_images covers {len(alone)} images, image_sizes "
                             f"{len(sizes)}")  # fmt: skip
        counts = [_num_tiles(s, h, w) if a else 1 for (h, w), a in zip(sizes, alone)]
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
            tiles = pixel_values
        else:
            if len(pixel_values) != len(sizes):
                raise ValueError(f"{len(pixel_values)} images of pixel_values, {len(sizes)} sizes")
            tiles = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])
        if tiles.dim() != 4 or tiles.shape[0] != sum(counts):
            raise ValueError(f"pixel_values: {sum(counts)} tiles expected for image_sizes "
                             f"{sizes}, got {tuple(tiles.shape)}")  # fmt: skip
        feats = self.vision_tower(tiles, s.feature_layer)
        if s.strategy == "default":
            feats = feats[:, 1:]
        feats = self.multi_modal_projector(feats)
        return [self._pack(f, size) for f, size in zip(feats.split(counts), sizes)]

    def _pack(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """One image's tiles [tiles, side^2, D] -> its embeddings [tokens, D]."""
        newline = self.image_newline.to(feats.dtype)
        if feats.shape[0] == 1:
            return torch.cat([feats[0], newline[None]])
        s, dim = self.settings, feats.shape[-1]
        base, side = feats[0], s.side
        if base.shape[0] != side * side:
            raise ValueError(f"{base.shape[0]} features per tile, {side}x{side} expected")
        rows, cols, (top, bottom, left, right), shrunk = _grid(s, *size)
        grid = feats[1:].view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3)
        grid = grid.reshape(dim, rows * side, cols * side)[:, top:bottom, left:right]
        if shrunk is not None:
            grid = F.interpolate(grid[None], list(shrunk), mode="bilinear")[0]
        h = grid.shape[1]
        grid = torch.cat([grid, newline[:, None, None].expand(dim, h, 1)], dim=-1)
        return torch.cat([base, grid.flatten(1, 2).transpose(0, 1)])

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint tensors named as transformers 5 (``model.vision_tower.*``,
        ``model.multi_modal_projector.*``, ``model.image_newline``) or as older checkpoints
        (no ``model.``; ``vision_tower.vision_model.*``); the language model, ``lm_head`` and
        the unused SigLIP pooling head are skipped. Returns the parameter names filled."""

        def ours(name: str) -> str:
            name = name.removeprefix("model.")
            if name.startswith("vision_tower.") and not name.startswith(
                    "vision_tower.vision_model."):  # fmt: skip
                name = "vision_tower.vision_model." + name.removeprefix("vision_tower.")
            return name

        return load_into(self, ((ours(name), tensor) for name, tensor in weights))
