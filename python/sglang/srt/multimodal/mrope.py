"""Multimodal RoPE positions of Qwen2-VL style prompts (issue 14 building block, not served yet).

Text tokens get one position each, the same on the three axes (time, height, width). An image's
tokens (one per merged 2x2 patch block, ``grid_thw // (1, merge, merge)``) share the position where
the image starts on the time axis and count rows / columns from there on the height / width axes;
the text after the image continues at ``start + max(rows, columns)``. ``mrope_positions`` returns
the [3, L] positions and the delta that later decode steps add to their 1-D position (the
sequence's last position + 1 minus its length), as transformers' ``get_rope_index`` does for
images (t = 1).
"""

from __future__ import annotations

import itertools

import torch


def mrope_positions(token_types: list[int], grids: list[list[int]], merge: int
                    ) -> tuple[torch.Tensor, int]:  # fmt: skip
    """``token_types``: 0 for text, 1 for image tokens, per prompt token; ``grids``: each image's
    (t, h, w) in patches, in prompt order. (positions [3, L] int64, delta)."""
    parts, pos = [], 0
    images = iter(grids)
    for kind, run in itertools.groupby(token_types):
        n = len(list(run))
        if kind == 0:
            parts.append(torch.arange(pos, pos + n).expand(3, n))
            pos += n
            continue
        t, h, w = next(images)
        rows, cols = h // merge, w // merge
        if t * rows * cols != n:
            raise ValueError(f"an image of grid {(t, h, w)} has {t * rows * cols} tokens, the "
                             f"prompt holds {n}")
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(rows), torch.arange(cols),
                                    indexing="ij")  # fmt: skip
        parts.append(torch.stack([tt.flatten() + pos, hh.flatten() + pos, ww.flatten() + pos]))
        pos += max(rows, cols)
    positions = torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)
    delta = int(positions.max()) + 1 - len(token_types) if parts else 0
    return positions, delta
