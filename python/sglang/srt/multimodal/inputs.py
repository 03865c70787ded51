"""The typed image inputs of one request, as they travel from the HTTP process to the engine.

``ImageItem``: one image of the prompt, with where its embeddings go (``start``, ``length``: a
span of the expanded prompt) and what the engine needs to compute them: the image processor's
output for that image (``pixel_values`` plus the model's per-image shape: ``grid_thw`` for
Qwen2-VL, ``image_size`` for LLaVA-OneVision), or the embedding itself (``precomputed_embedding``
requests). ``ImageInputs``: a prompt's images in order, and for M-RoPE models the prompt's
[3, L] positions and the delta that positions past the prompt add.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageItem:
    hash: int  # of the decoded pixels (or of the given tensors): keys the radix cache
    start: int
    length: int
    pixel_values: np.ndarray | None = None
    grid_thw: list[int] | None = None  # Qwen2-VL family: (t, h, w) in patches
    image_size: list[int] | None = None  # LLaVA-OneVision: the original (height, width)
    alone: bool = True  # LLaVA-OneVision: the prompt's only image (else one tile, no anyres)
    embedding: np.ndarray | None = None  # [length, hidden]: skips the vision tower

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class ImageInputs:
    items: list[ImageItem] = field(default_factory=list)
    mrope_positions: np.ndarray | None = None  # [3, prompt_len] int64
    mrope_delta: int = 0
