"""Image input on a server of a tiny random-weight LLaVA-OneVision (SigLIP tower, projector,
any-resolution tiles, Qwen2 language model; fp32) against transformers on the same images:
greedy tokens and prompt logprobs for one image of several sizes and aspect ratios (tiling,
unpadding) and for two images in one prompt (one tile each), a batch mixing image and text-only
prompts, and the radix cache with images."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_utils import serving
from vlm_utils import HFLlava, image, png_bytes, save_tiny_llava_onevision

NEW = 6
GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}
ONE = "Describe <image> in detail"
TWO = "Compare <image> and <image> now"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llava_onevision(tmp_path_factory.mktemp("llava-onevision"))


@pytest.fixture(scope="module")
def hf(folder: Path) -> HFLlava:
    return HFLlava(folder)


@pytest.fixture(scope="module")
def url(folder: Path) -> Iterator[str]:
    with serving(str(folder), ["--dtype", "float32", "--log-level", "warning"]) as u:
        yield u


def data_url(img: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()


def generate(url: str, **body: Any) -> Any:
    body.setdefault("sampling_params", GREEDY)
    r = requests.post(f"{url}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("text,sizes", [
    (ONE, [(70, 45)]),  # wide: a 2-tile grid, padding rows cut
    (ONE, [(30, 90)]),  # tall: 3 tiles
    (ONE, [(12, 10)]),  # smaller than a tile
    (TWO, [(40, 40), (100, 50)]),  # two images: one padded-to-square tile each
])  # fmt: skip
def test_greedy_and_prompt_logprobs_match_transformers(
    url: str, hf: HFLlava, text: str, sizes: list[tuple[int, int]]
) -> None:
    images = [image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    out = generate(url, text=text, image_data=[data_url(im) for im in images],
                   return_logprob=True, logprob_start_len=0)  # fmt: skip
    assert out["output_ids"] == hf.greedy(text, images, NEW)
    expanded, ref = hf.prompt_logprobs(text, images)
    ours = out["meta_info"]["input_token_logprobs"]
    assert len(ours) == len(expanded) == out["meta_info"]["prompt_tokens"]
    text_rows = [j for j in range(1, len(expanded)) if expanded[j] != hf.image_token_id]
    assert len(text_rows) >= 3
    for j in text_rows:
        assert ours[j][0] == pytest.approx(ref[j - 1], abs=2e-3)


def test_batch_and_cache(url: str, hf: HFLlava) -> None:
    requests.post(f"{url}/flush_cache", timeout=30)
    img, other = image(64, 40, seed=5), image(64, 40, seed=6)
    texts = [ONE, "No image in this one", ONE]
    out = generate(url, text=texts, image_data=[data_url(img), None, data_url(other)])
    for item, text, x in zip(out, texts, [[img], [], [other]]):
        assert item["output_ids"] == hf.greedy(text, x, NEW)
    again = generate(url, text=ONE, image_data=data_url(img))
    assert again["meta_info"]["cached_tokens"] == again["meta_info"]["prompt_tokens"] - 1
    assert again["output_ids"] == out[0]["output_ids"]
    # the same image alone and next to another image has other embeddings: no shared span
    both = generate(url, text="Describe <image> <image>", image_data=[data_url(img)] * 2)
    before = hf.tokenizer.encode(ONE).index(hf.image_token_id)
    assert both["meta_info"]["cached_tokens"] == before


def test_model_info(url: str) -> None:
    info = requests.get(f"{url}/get_model_info", timeout=30).json()
    assert info["has_image_understanding"] is True
