"""``ImageProcessor`` (Qwen2-VL family) on its own: every image format gives the same pixels,
grids and pad ids; a prompt the HF processor already expanded gives the same ids as one with
single placeholders; M-RoPE positions keep adjacent images apart; refused inputs."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sglang.srt.multimodal.image_loader import ImageError, ImageLimits
from sglang.srt.multimodal.processor import ImageProcessor, collapse_runs

IMAGE = 7  # the image token id of these tests
VOCAB, HIDDEN = 1000, 16


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory) -> ImageProcessor:
    from transformers import Qwen2VLImageProcessorPil

    folder = tmp_path_factory.mktemp("qwen2-vl-processor")
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=112 * 112).save_pretrained(folder)
    config = {"image_token_id": IMAGE,
              "vision_config": {"spatial_merge_size": 2, "patch_size": 14,
                                "temporal_patch_size": 2}}  # fmt: skip
    proc = ImageProcessor.for_model("Qwen2VLForConditionalGeneration", str(folder), config,
                                    VOCAB, HIDDEN, ImageLimits(max_pixels=300 * 300))  # fmt: skip
    assert proc is not None
    return proc


def _image(w: int, h: int, seed: int) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_every_format_gives_the_same_inputs(processor: ImageProcessor, tmp_path: Path) -> None:
    img = _image(84, 56, 0)
    path = tmp_path / "a.png"
    path.write_bytes(_png(img))
    b64 = base64.b64encode(_png(img)).decode()
    prompt = [1, 2, IMAGE, 3]
    results = [processor.process(prompt, [item]) for item in
               (img, _png(img), str(path), f"file://{path}", b64, f"data:image/png;base64,{b64}")]
    ids, inputs = results[0]
    item = inputs.items[0]
    assert item.grid_thw == [1, 4, 6] and item.length == 6 and item.start == 2
    assert len(ids) == 3 + 6 and ids[:2] == [1, 2] and ids[-1] == 3
    assert all(0 <= t < VOCAB for t in ids)
    for other_ids, other in results[1:]:
        assert other_ids == ids
        np.testing.assert_array_equal(other.items[0].pixel_values, item.pixel_values)
    # the HF processor's own output, with the prompt it expanded: the same positions
    out = processor.hf(images=[img], return_tensors="np")
    expanded = [1, 2, *[IMAGE] * 6, 3]
    ids2, inputs2 = processor.process(expanded, [{"format": "processor_output", **out}])
    assert len(ids2) == len(ids) and inputs2.items[0].grid_thw == [1, 4, 6]
    np.testing.assert_array_equal(inputs2.items[0].pixel_values, item.pixel_values)
    np.testing.assert_array_equal(inputs2.mrope_positions, inputs.mrope_positions)


def test_a_different_image_gets_different_pad_ids(processor: ImageProcessor) -> None:
    a, _ = processor.process([IMAGE], [_image(56, 56, 1)])
    b, _ = processor.process([IMAGE], [_image(56, 56, 2)])
    again, _ = processor.process([IMAGE], [_image(56, 56, 1)])
    assert a == again and a[0] != b[0]


def test_adjacent_images_keep_their_own_mrope_blocks(processor: ImageProcessor) -> None:
    ids, inputs = processor.process([5, IMAGE, IMAGE, 6], [_image(56, 56, 3), _image(56, 28, 4)])
    assert [(i.start, i.length) for i in inputs.items] == [(1, 4), (5, 2)]
    pos = inputs.mrope_positions
    assert pos[:, 0].tolist() == [0, 0, 0]
    assert pos[:, 1:5].T.tolist() == [[1, 1, 1], [1, 1, 2], [1, 2, 1], [1, 2, 2]]
    assert pos[:, 5:7].T.tolist() == [[3, 3, 3], [3, 3, 4]]  # after the first 2 x 2 block
    assert pos[:, 7].tolist() == [5, 5, 5] and inputs.mrope_delta == 5 + 1 - len(ids)


def test_collapse_runs() -> None:
    assert collapse_runs([1, 7, 7, 7, 2, 7, 3], 7) == [1, 7, 2, 7, 3]


@pytest.mark.parametrize("items,message", [
    ([b"not an image"], "not a readable image"),
    (["x", {"format": "processor_output"}], "one format for all images"),
    ([{"format": "processor_output"}], "needs pixel_values"),
    ([{"format": "precomputed_embedding", "image_grid_thw": [[1, 2, 2]]}],
     "needs precomputed_embeddings"),
    ([{"format": "precomputed_embedding", "image_grid_thw": [[1, 2, 2]],
       "precomputed_embeddings": [[float("nan")] * HIDDEN]}], "finite"),
    ([{"format": "processor_output", "image_grid_thw": [[1, 2, 2]],
       "pixel_values": [[float("inf")] * 1176] * 4}], "finite"),
    ([{"format": "processor_output", "image_grid_thw": [[1, -2, 2]],
       "pixel_values": [[0.0] * 1176] * 4}], "positive integers"),
])  # fmt: skip
def test_refused_items(processor: ImageProcessor, items: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        processor.process([IMAGE] * len(items), items)


def test_placeholder_count_and_pixel_limit(processor: ImageProcessor) -> None:
    with pytest.raises(ValueError, match="2 image placeholder"):
        processor.process([IMAGE, 1, IMAGE], [_image(30, 30, 0)])
    with pytest.raises(ImageError, match="pixels"):
        processor.process([IMAGE], [_image(400, 300, 0)])


def test_text_only_architectures_have_no_processor() -> None:
    assert ImageProcessor.for_model("LlamaForCausalLM", "/nowhere", {}, VOCAB, HIDDEN) is None
