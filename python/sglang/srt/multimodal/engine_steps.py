"""The engine's side of image prompts: per forward step, which rows get image embeddings and
which rotary positions the model sees.

``ImageSteps.step(plan, ereqs)`` looks at the requests of a step that carry images:

* an extend step whose new rows cover part of an image span runs the vision tower on those
  images (once per request: the embeddings are kept until the prompt's prefill ends, so a span cut
  by chunked prefill is encoded once) and returns the rows to write over the token embeddings; a
  span served from the radix cache needs no tower at all;
* for M-RoPE models, rows inside the prompt take the prompt's [3, L] positions, and rows past it
  (decode, or generated tokens prefilled again after a retraction) take their 1-D position plus
  the request's delta: the three axes are equal there, so the ordinary RoPE path (fused kernels,
  CUDA graphs) applies to every decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sglang import _core


@dataclass
class StepImages:
    positions: np.ndarray | None = None  # 1-D rotary positions replacing the plan's
    mrope_positions: np.ndarray | None = None  # [3, T]: extend steps over image prompts
    rows: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (first row, embeddings)

    def write(self, embeds: torch.Tensor) -> None:
        """Puts the image embeddings at their rows of the step's ``input_embeds``."""
        for lo, rows in self.rows:
            embeds[lo:lo + rows.shape[0]] = rows.to(embeds.device, embeds.dtype)


class ImageSteps:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.mrope = bool(getattr(model, "uses_mrope", False))

    def step(self, plan: Any, ereqs: list[Any]) -> StepImages | None:
        if not any(e.images is not None for e in ereqs):
            return None
        decode = plan.mode == _core.ForwardMode.DECODE
        positions = np.asarray(plan.positions, dtype=np.int64)
        shifted = positions.copy()
        out = StepImages()
        prompt_rows: list[tuple[np.ndarray, np.ndarray, Any]] = []
        for i, e in enumerate(ereqs):
            images = e.images
            if images is None:
                continue
            lo, n = (i, 1) if decode else (int(plan.extend_start[i]), int(plan.extend_lens[i]))
            prompt_len = len(e.req.input_ids)
            pos = positions[lo:lo + n]
            if self.mrope:
                inside = pos < prompt_len
                shifted[lo:lo + n][~inside] += images.mrope_delta
                if inside.any() and not decode:
                    prompt_rows.append((np.arange(lo, lo + n)[inside], pos[inside], images))
            if not decode and n:
                out.rows += self._rows(e, lo, int(pos[0]), n, prompt_len)
        if self.mrope:
            out.positions = shifted
            if prompt_rows:
                mrope = np.repeat(shifted[None, :], 3, axis=0)
                for rows, pos, images in prompt_rows:
                    mrope[:, rows] = images.mrope_positions[:, pos]
                out.mrope_positions = mrope
        return out

    def _rows(self, e: Any, lo: int, first: int, n: int, prompt_len: int
              ) -> list[tuple[int, torch.Tensor]]:  # fmt: skip
        """The image rows among prompt positions [first, first + n) of request ``e``, which
        starts at step row ``lo``; encodes the images not encoded yet."""
        end = first + n
        hit = [k for k, item in enumerate(e.images.items) if item.start < end and item.end > first]
        todo = [k for k in hit if k not in e.image_embeds]
        if todo:
            self._encode(e, todo)
        rows = []
        for k in hit:
            item = e.images.items[k]
            a, b = max(first, item.start), min(end, item.end)
            rows.append((lo + a - first, e.image_embeds[k][a - item.start:b - item.start]))
        if end >= prompt_len:
            e.image_embeds.clear()  # the prompt is in the KV cache now
        return rows

    def _encode(self, e: Any, todo: list[int]) -> None:
        items = [e.images.items[k] for k in todo]
        towers = [k for k, item in zip(todo, items) if item.embedding is None]
        with torch.inference_mode():
            if towers:
                encoded = self.model.encode_images([e.images.items[k] for k in towers])
                e.image_embeds.update(zip(towers, encoded))
            for k, item in zip(todo, items):
                if item.embedding is not None:
                    e.image_embeds[k] = torch.from_numpy(item.embedding)
        for k, item in zip(todo, items):
            if e.image_embeds[k].shape[0] != item.length:
                raise ValueError(f"image {k} has {e.image_embeds[k].shape[0]} embeddings for "
                                 f"{item.length} placeholder positions")
