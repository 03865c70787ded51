"""A prompt's ``image_data`` -> expanded prompt ids + ``ImageInputs`` (runs in the HTTP process,
on the tokenize thread, never on the engine loop).

``ImageProcessor.for_model`` picks the model family's processor (None for a text-only model).
``process(input_ids, items)``:

1. reads the items, all in one of three formats (SGLang's): images (anything
   ``image_loader.load_image`` takes), ``{"format": "processor_output", ...}`` (the HF processor's
   own output: ``pixel_values`` and the per-image shapes) or ``{"format":
   "precomputed_embedding", ...}`` (the vision tower's output, which skips the tower);
2. runs the model's HF image processor on the images (transformers; the PIL backend);
3. expands each image placeholder of the prompt (one token per image, or a run of them as the HF
   processor writes it) to one position per image embedding and puts hash-derived pad ids there
   (``placeholders``), so the radix cache tells images apart;
4. for M-RoPE models, computes the prompt's [3, L] positions and delta (``mrope``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from sglang.srt.multimodal.image_loader import ImageError, ImageLimits, image_hash, load_image
from sglang.srt.multimodal.inputs import ImageInputs, ImageItem
from sglang.srt.multimodal.mrope import mrope_positions
from sglang.srt.multimodal.placeholders import expand_image_tokens, with_pad_ids

FORMATS = ("processor_output", "precomputed_embedding")
QWEN2_VL_ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
LLAVA_ONEVISION_ARCHITECTURES = ("LlavaOnevisionForConditionalGeneration",)


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _array(value: Any, name: str, dtype: Any) -> np.ndarray:
    """A tensor / array / nested list of a dict-format item as a numpy array."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().float().numpy() if dtype == np.float32 else \
            value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"image_data: {name} must be an array of numbers ({exc}).") from None


def _digest(*arrays: np.ndarray) -> int:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def collapse_runs(input_ids: Sequence[int], token_id: int) -> list[int]:
    """Each run of ``token_id`` as one token (a prompt the HF processor already expanded)."""
    out: list[int] = []
    for t in input_ids:
        if t != token_id or not out or out[-1] != token_id:
            out.append(t)
    return out


class ImageProcessor:
    """Base: the family-independent steps; subclasses read their processor's outputs."""

    image_token_id: int

    def __init__(self, folder: str, hf_config: Any, vocab_size: int, hidden_size: int,
                 limits: ImageLimits | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.hf_config = hf_config
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size  # of precomputed embeddings
        self.limits = limits or ImageLimits.from_env()

    @staticmethod
    def for_model(architecture: str, folder: str, hf_config: Any, vocab_size: int,
                  hidden_size: int, limits: ImageLimits | None = None
                  ) -> ImageProcessor | None:  # fmt: skip
        if architecture in QWEN2_VL_ARCHITECTURES:
            return Qwen2VLImageProcessor(folder, hf_config, vocab_size, hidden_size, limits)
        if architecture in LLAVA_ONEVISION_ARCHITECTURES:
            return LlavaOnevisionImageProcessor(folder, hf_config, vocab_size, hidden_size, limits)
        return None

    def process(self, input_ids: Sequence[int], items: list[Any]) -> tuple[list[int], ImageInputs]:
        fmt = self._format(items)
        if fmt == "image":
            images = [load_image(item, self.limits) for item in items]
            parts = self.from_images(images, [image_hash(im) for im in images])
        elif fmt == "processor_output":
            parts = [p for item in items for p in self.from_processor_output(item)]
        else:
            parts = [p for item in items for p in self.from_embedding(item)]
        ids = list(input_ids)
        if ids.count(self.image_token_id) != len(parts):  # expanded by the HF processor?
            ids = collapse_runs(ids, self.image_token_id)
        ids, spans = expand_image_tokens(ids, self.image_token_id, [p.length for p in parts])
        for part, span in zip(parts, spans, strict=True):
            part.start = span.start
        ids = with_pad_ids(ids, spans, [p.hash for p in parts], self.vocab_size)
        inputs = ImageInputs(items=parts)
        self.positions(inputs, len(ids))
        return ids, inputs

    @staticmethod
    def _format(items: list[Any]) -> str:
        kinds = set()
        for item in items:
            if isinstance(item, dict):
                fmt = item.get("format")
                if fmt is None:  # SGLang's older spelling: inferred from the keys
                    fmt = "precomputed_embedding" if any(
                        k in item for k in ("precomputed_embeddings", "feature")) \
                        else "processor_output"
                if fmt not in FORMATS:
                    raise ImageError(f"image_data: format {fmt!r} is not one of {list(FORMATS)}.")
                kinds.add(fmt)
            else:
                kinds.add("image")
        if len(kinds) > 1:
            raise ImageError("image_data: use one format for all images of a request, got "
                             f"{sorted(kinds)}.")
        return kinds.pop()

    # ---- per family ------------------------------------------------------------------------------
    def from_images(self, images: list[Any], hashes: list[int]) -> list[ImageItem]:
        raise NotImplementedError

    def from_processor_output(self, item: dict[str, Any]) -> list[ImageItem]:
        raise NotImplementedError

    def from_embedding(self, item: dict[str, Any]) -> list[ImageItem]:
        """``precomputed_embeddings`` (or ``feature``) [all images' tokens, hidden] and each
        image's shape (``shape_key``), split per image."""
        key = next((k for k in ("precomputed_embeddings", "feature") if k in item), None)
        if key is None or self.shape_key not in item:
            raise ImageError(f"image_data: a precomputed_embedding item needs "
                             f"precomputed_embeddings and {self.shape_key}.")
        shapes = self._shapes(item[self.shape_key]).tolist()
        embeds = _array(item[key], key, np.float32)
        counts = [self._tokens(shape) for shape in shapes]
        if embeds.ndim != 2 or embeds.shape != (sum(counts), self.hidden_size):
            raise ImageError(f"image_data: {key} must be [{sum(counts)}, {self.hidden_size}] "
                             f"for {self.shape_key} {shapes}, got {list(embeds.shape)}.")
        if not np.isfinite(embeds).all():
            raise ImageError(f"image_data: {key} must contain only finite numbers.")
        bounds = [0, *itertools.accumulate(counts)]
        return [ImageItem(hash=_digest(embeds[a:b]), start=0, length=b - a,
                          embedding=embeds[a:b], **{self.item_field: shape})
                for shape, a, b in zip(shapes, bounds, bounds[1:])]  # fmt: skip

    # The per-image shape: its name in processor outputs, its ImageItem field.
    shape_key = ""
    item_field = ""

    def _shapes(self, value: Any) -> np.ndarray:
        """The validated per-image shapes of a dict-format item [images, ...]."""
        raise NotImplementedError

    def _tokens(self, shape: Sequence[int]) -> int:
        """Embeddings (prompt positions) of an image of that shape."""
        raise NotImplementedError

    def positions(self, inputs: ImageInputs, length: int) -> None:
        """Fills the M-RoPE positions of M-RoPE models (nothing for the others)."""


class Qwen2VLImageProcessor(ImageProcessor):
    """Qwen2-VL / Qwen2.5-VL: patches [rows, C*T*P*P] per image with its (t, h, w) grid; one
    embedding per merge x merge block of patches."""

    def __init__(self, folder: str, hf_config: Any, vocab_size: int, hidden_size: int,
                 limits: ImageLimits | None = None) -> None:  # fmt: skip
        super().__init__(folder, hf_config, vocab_size, hidden_size, limits)
        from transformers import AutoImageProcessor

        self.image_token_id = int(_get(hf_config, "image_token_id"))
        vision = _get(hf_config, "vision_config")
        self.merge = int(_get(vision, "spatial_merge_size", 2))
        patch = int(_get(vision, "patch_size", 14))
        self.patch_dim = int(_get(vision, "in_channels", _get(vision, "in_chans", 3))) * \
            int(_get(vision, "temporal_patch_size", 2)) * patch * patch
        self.hf = AutoImageProcessor.from_pretrained(folder)

    def _tokens(self, grid: Sequence[int]) -> int:
        t, h, w = (int(x) for x in grid)
        return t * (h // self.merge) * (w // self.merge)

    def _split(self, pixels: np.ndarray, grids: np.ndarray, hashes: list[int] | None
               ) -> list[ImageItem]:  # fmt: skip
        self._check_grids(grids)
        sizes = [int(np.prod(g)) for g in grids]
        if pixels.ndim != 2 or pixels.shape[0] != sum(sizes) or pixels.shape[1] != self.patch_dim:
            raise ImageError(f"image_data: pixel_values must be [{sum(sizes)}, {self.patch_dim}] "
                             f"for image_grid_thw {grids.tolist()}, got {list(pixels.shape)}.")
        if not np.isfinite(pixels).all():
            raise ImageError("image_data: pixel_values must contain only finite numbers.")
        items, row = [], 0
        for i, (grid, n) in enumerate(zip(grids.tolist(), sizes)):
            block = pixels[row:row + n]
            row += n
            h = hashes[i] if hashes else _digest(block, np.asarray(grid))
            items.append(ImageItem(hash=h, start=0, length=self._tokens(grid),
                                   pixel_values=block, grid_thw=grid))
        return items

    shape_key, item_field = "image_grid_thw", "grid_thw"

    def _shapes(self, value: Any) -> np.ndarray:
        grids = _array(value, "image_grid_thw", np.int64)
        self._check_grids(grids)
        return grids

    def _check_grids(self, grids: np.ndarray) -> None:
        if grids.ndim != 2 or grids.shape[1] != 3 or len(grids) == 0 or (grids <= 0).any() or \
                (grids[:, 1:] % self.merge).any() or (grids > 4096).any():
            raise ImageError(f"image_data: image_grid_thw must be rows (t, h, w) of positive "
                             f"integers up to 4096, h and w multiples of {self.merge}.")

    def from_images(self, images: list[Any], hashes: list[int]) -> list[ImageItem]:
        out = self.hf(images=images, return_tensors="np")
        return self._split(np.asarray(out["pixel_values"], dtype=np.float32),
                           np.asarray(out["image_grid_thw"], dtype=np.int64), hashes)

    def from_processor_output(self, item: dict[str, Any]) -> list[ImageItem]:
        for key in ("pixel_values", "image_grid_thw"):
            if key not in item:
                raise ImageError(f"image_data: a processor_output item needs {key}.")
        return self._split(_array(item["pixel_values"], "pixel_values", np.float32),
                           self._shapes(item["image_grid_thw"]), None)

    def positions(self, inputs: ImageInputs, length: int) -> None:
        types = [0] * length  # image i is i + 1: adjacent images stay apart
        for i, item in enumerate(inputs.items):
            types[item.start:item.end] = [i + 1] * item.length
        grids = [item.grid_thw for item in inputs.items]
        pos, delta = mrope_positions(types, grids, self.merge)  # type: ignore[arg-type]
        inputs.mrope_positions = pos.numpy()
        inputs.mrope_delta = delta


class LlavaOnevisionImageProcessor(ImageProcessor):
    """LLaVA-OneVision: any-resolution tiles [patches, 3, H, W] per image with its original
    (height, width); the number of embeddings follows from the size and the config's grid
    pinpoints (``llava_onevision_vision.num_image_tokens``)."""

    def __init__(self, folder: str, hf_config: Any, vocab_size: int, hidden_size: int,
                 limits: ImageLimits | None = None) -> None:  # fmt: skip
        super().__init__(folder, hf_config, vocab_size, hidden_size, limits)
        from transformers import AutoImageProcessor

        token = _get(hf_config, "image_token_id", _get(hf_config, "image_token_index"))
        self.image_token_id = int(token)
        self.hf = AutoImageProcessor.from_pretrained(folder)

    def process(self, input_ids: Sequence[int], items: list[Any]) -> tuple[list[int], ImageInputs]:
        # Several images in one prompt are one tile each (fewer tokens, other embeddings); read
        # by _tokens and _items. (The tokenize thread is the only caller.)
        count = sum(len(np.asarray(item.get("image_sizes", [[0, 0]])).reshape(-1, 2))
                    if isinstance(item, dict) else 1 for item in items)  # fmt: skip
        self.multi_image = count > 1
        return super().process(input_ids, items)

    multi_image = False

    def _tokens(self, size: Sequence[int]) -> int:
        from sglang.srt.models.llava_onevision_vision import num_image_tokens

        return int(num_image_tokens(self.hf_config, int(size[0]), int(size[1]),
                                    multi_image=self.multi_image))  # fmt: skip

    shape_key, item_field = "image_sizes", "image_size"

    def _shapes(self, value: Any) -> np.ndarray:
        sizes = _array(value, "image_sizes", np.int64)
        if sizes.ndim != 2 or sizes.shape[1] != 2 or (sizes <= 0).any() or \
                (sizes > 1 << 16).any():
            raise ImageError("image_data: image_sizes must be one (height, width) of positive "
                             "integers up to 65536 per image.")
        return sizes

    def _items(self, pixels: list[np.ndarray], sizes: np.ndarray, hashes: list[int] | None
               ) -> list[ImageItem]:  # fmt: skip
        if len(sizes) != len(pixels):
            raise ImageError(f"image_data: {len(pixels)} pixel_values for {len(sizes)} "
                             "image_sizes.")
        items = []
        for i, (block, size) in enumerate(zip(pixels, sizes.tolist())):
            if block.ndim != 4 or block.shape[1] != 3 or not np.isfinite(block).all():
                raise ImageError("image_data: pixel_values must be finite [images, patches, 3, "
                                 "height, width] arrays.")
            h = hashes[i] if hashes else _digest(block, np.asarray(size))
            if self.multi_image:  # other embeddings than the same image alone: other pad ids
                h = (h * 0x9E3779B1 + 1) & ((1 << 63) - 1)
            items.append(ImageItem(hash=h, start=0, length=self._tokens(size),
                                   pixel_values=block, image_size=size,
                                   alone=not self.multi_image))  # fmt: skip
        return items

    def from_images(self, images: list[Any], hashes: list[int]) -> list[ImageItem]:
        if self.multi_image:  # the prompt's images together: one padded-to-square tile each
            out = self.hf(images=[images], return_tensors="np")
            pixels = list(np.asarray(out["pixel_values"], dtype=np.float32))
            return self._items(pixels, self._shapes(np.asarray(out["image_sizes"])), hashes)
        out = self.hf(images=images, return_tensors="np")  # one image: its any-resolution tiles
        return self._items([np.asarray(out["pixel_values"][0], dtype=np.float32)],
                           self._shapes(np.asarray(out["image_sizes"])), hashes)

    def from_processor_output(self, item: dict[str, Any]) -> list[ImageItem]:
        for key in ("pixel_values", "image_sizes"):
            if key not in item:
                raise ImageError(f"image_data: a processor_output item needs {key}.")
        pixels = _array(item["pixel_values"], "pixel_values", np.float32)
        if pixels.ndim == 4:
            pixels = pixels[None]
        return self._items(list(pixels), self._shapes(item["image_sizes"]), None)
