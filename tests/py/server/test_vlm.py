"""Image input on a server of a tiny random-weight Qwen2-VL, then Qwen2.5-VL (fp32), against transformers on the
same images: greedy tokens and prompt logprobs (one image, two images of different sizes, a batch
mixing image and text-only prompts), the radix cache with images, every ``image_data`` format
(file path, file URL, http URL from a local server, base64, data URL, ``processor_output``,
``precomputed_embedding``), and the 400s (broken image, unreachable URL, over-size image,
placeholder count, audio_data) after which the server keeps serving."""

from __future__ import annotations

import base64
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from server_utils import free_port, serving
from vlm_utils import IMAGE_PART, HFQwenVL, image, png_bytes, save_tiny_qwen2_vl

NEW = 6
GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}
MAX_PIXELS = 150 * 150  # the server's SGLANG_IMAGE_MAX_PIXELS here
PROMPT = f"Describe {IMAGE_PART} in detail"
TWO = f"Compare {IMAGE_PART} with {IMAGE_PART} please"


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp(request.param), version=request.param)


@pytest.fixture(scope="module")
def hf(folder: Path) -> HFQwenVL:
    return HFQwenVL(folder)


@pytest.fixture(scope="module")
def url(folder: Path) -> Iterator[str]:
    old = os.environ.get("SGLANG_IMAGE_MAX_PIXELS")
    os.environ["SGLANG_IMAGE_MAX_PIXELS"] = str(MAX_PIXELS)
    os.environ["SGLANG_IMAGE_URL_TIMEOUT"] = "3"
    try:
        with serving(str(folder), ["--dtype", "float32", "--log-level", "warning"]) as u:
            yield u
    finally:
        os.environ.pop("SGLANG_IMAGE_URL_TIMEOUT", None)
        if old is None:
            os.environ.pop("SGLANG_IMAGE_MAX_PIXELS", None)
        else:
            os.environ["SGLANG_IMAGE_MAX_PIXELS"] = old


def data_url(img: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()


def generate(url: str, **body: Any) -> requests.Response:
    body.setdefault("sampling_params", GREEDY)
    return requests.post(f"{url}/generate", json=body, timeout=120)


def ok(r: requests.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def ids(hf: HFQwenVL, text: str) -> list[int]:
    return hf.tokenizer.encode(text)


# ---- against transformers ----------------------------------------------------------------------
@pytest.mark.parametrize("text,sizes", [
    (PROMPT, [(90, 60)]),
    (PROMPT, [(40, 130)]),  # tall: a 1 x 10 x 2 patch grid... resized by the processor
    (TWO, [(64, 64), (112, 84)]),
])  # fmt: skip
def test_greedy_and_prompt_logprobs_match_transformers(
    url: str, hf: HFQwenVL, text: str, sizes: list[tuple[int, int]]
) -> None:
    images = [image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    out = ok(generate(url, text=text, image_data=[data_url(im) for im in images],
                      return_logprob=True, logprob_start_len=0))  # fmt: skip
    assert out["output_ids"] == hf.greedy(ids(hf, text), images, NEW)
    expanded, ref = hf.prompt_logprobs(ids(hf, text), images)
    ours = out["meta_info"]["input_token_logprobs"]
    assert len(ours) == len(expanded) == out["meta_info"]["prompt_tokens"]
    text_rows = [j for j in range(1, len(expanded)) if expanded[j] != hf.image_token_id]
    assert len(text_rows) >= 4
    for j in text_rows:  # image positions hold pad ids here, the image token in transformers
        assert ours[j][0] == pytest.approx(ref[j - 1], abs=2e-3)


def test_batch_mixing_image_and_text_prompts(url: str, hf: HFQwenVL) -> None:
    img = image(80, 80, seed=7)
    texts = [PROMPT, "Just text, no image here", TWO]
    imgs = [[img], None, [image(50, 70, seed=8), img]]
    out = ok(generate(url, text=texts, image_data=[
        [data_url(i) for i in x] if x else None for x in imgs]))  # fmt: skip
    for item, text, x in zip(out, texts, imgs):
        assert item["output_ids"] == hf.greedy(ids(hf, text), x or [], NEW)


# ---- the radix cache ---------------------------------------------------------------------------
def test_same_image_hits_the_cache_and_another_image_does_not(url: str, hf: HFQwenVL) -> None:
    requests.post(f"{url}/flush_cache", timeout=30)
    img, other = image(96, 72, seed=11), image(96, 72, seed=12)
    first = ok(generate(url, text=PROMPT, image_data=data_url(img)))
    again = ok(generate(url, text=PROMPT, image_data=data_url(img)))
    prompt_tokens = first["meta_info"]["prompt_tokens"]
    assert first["meta_info"]["cached_tokens"] == 0
    assert again["meta_info"]["cached_tokens"] == prompt_tokens - 1  # all but the last
    assert again["output_ids"] == first["output_ids"] == hf.greedy(ids(hf, PROMPT), [img], NEW)
    before_image = ids(hf, PROMPT).index(hf.image_token_id)
    miss = ok(generate(url, text=PROMPT, image_data=data_url(other)))
    assert miss["meta_info"]["cached_tokens"] == before_image
    assert miss["output_ids"] == hf.greedy(ids(hf, PROMPT), [other], NEW)
    assert miss["output_ids"] != first["output_ids"]


# ---- image_data formats ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    img = image(70, 56, seed=21)
    path = tmp_path_factory.mktemp("images") / "pic.png"
    path.write_bytes(png_bytes(img))
    return img, path


@pytest.fixture(scope="module")
def http_images(picture: tuple[Any, Path]) -> Iterator[str]:
    folder = str(picture[1].parent)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=folder, **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_image_data_format_gives_the_same_tokens(
    url: str, hf: HFQwenVL, picture: tuple[Any, Path], http_images: str
) -> None:
    img, path = picture
    want = hf.greedy(ids(hf, PROMPT), [img], NEW)
    raw = base64.b64encode(path.read_bytes()).decode()
    for item in (str(path), f"file://{path}", f"{http_images}/{path.name}", raw, data_url(img),
                 [data_url(img)]):
        assert ok(generate(url, text=PROMPT, image_data=item))["output_ids"] == want, item
    inputs = hf.inputs(ids(hf, PROMPT), [img])
    processed = {"format": "processor_output", "pixel_values": inputs["pixel_values"].tolist(),
                 "image_grid_thw": inputs["image_grid_thw"].tolist()}
    expanded = inputs["input_ids"][0].tolist()  # as the HF processor writes the prompt
    assert ok(generate(url, input_ids=expanded, image_data=[processed]))["output_ids"] == want
    with torch.inference_mode():
        feats = hf.model.model.get_image_features(inputs["pixel_values"],
                                                  inputs["image_grid_thw"])  # fmt: skip
    feats = torch.cat(list(getattr(feats, "pooler_output", feats)))
    embedded = {"format": "precomputed_embedding", "precomputed_embeddings": feats.tolist(),
                "image_grid_thw": inputs["image_grid_thw"].tolist()}
    assert ok(generate(url, input_ids=expanded, image_data=[embedded]))["output_ids"] == want


# ---- refused requests --------------------------------------------------------------------------
def test_bad_images_are_400s_and_the_server_keeps_serving(url: str, hf: HFQwenVL) -> None:
    closed = f"http://127.0.0.1:{free_port()}/cat.png"
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG not an image").decode()
    cases = [
        ({"image_data": broken}, "not a readable image"),
        ({"image_data": closed}, "cat.png"),
        ({"image_data": data_url(image(200, 200, seed=1))}, f"1 to {MAX_PIXELS} pixels"),
        ({"image_data": [data_url(image(30, 30, 1))] * 2}, "1 image placeholder(s) for 2"),
        ({"image_data": "not an image at all!"}, "is not a file"),
        ({"image_data": [{"format": "pixels"}]}, "format 'pixels'"),
        ({"image_data": [{"format": "processor_output", "pixel_values": [[0.0]],
                          "image_grid_thw": [[1, 2, 2]]}]}, "pixel_values must be [4, 1176]"),
        ({"image_data": [{"format": "processor_output", "pixel_values": [[0.0] * 5] * 4,
                          "image_grid_thw": [[1, 2, 2]]}]}, "pixel_values must be [4, 1176]"),
        ({"image_data": [{"format": "processor_output", "pixel_values": [[0.0] * 1176] * 3,
                          "image_grid_thw": [[1, 1, 3]]}]}, "multiples of 2"),
        ({"image_data": [{"format": "processor_output", "pixel_values": "x",
                          "image_grid_thw": [[1, 2, 2]]}]}, "must be an array of numbers"),
        ({"image_data": [{"format": "precomputed_embedding", "image_grid_thw": [[1, 2, 2]],
                          "precomputed_embeddings": [[0.0] * 8]}]}, "must be [1, 64]"),
        ({"audio_data": "a.wav"}, "audio_data is not supported"),
        ({"video_data": "v.mp4"}, "video_data is not supported"),
    ]  # fmt: skip
    for extra, message in cases:
        r = generate(url, text=PROMPT, **extra)
        assert r.status_code == 400, (extra, r.text)
        body = r.json()
        text = body["error"]["message"] if "error" in body else body["message"]
        assert message in text, text
    r = generate(url, text=[PROMPT, PROMPT], image_data=[data_url(image(30, 30, 1))])
    assert r.status_code == 400
    assert "The length of image_data should be equal to the batch size." in r.text
    assert ok(generate(url, text=PROMPT, image_data=data_url(image(30, 30, 1))))["output_ids"]


def test_model_info_reports_image_understanding(url: str) -> None:
    info = ok(requests.get(f"{url}/get_model_info", timeout=30))
    assert info["has_image_understanding"] is True


def test_parallel_samples_share_the_image_prefill(url: str, hf: HFQwenVL) -> None:
    """n > 1 prefills the prompt once (with its image) and every sample reads that KV."""
    requests.post(f"{url}/flush_cache", timeout=30)
    img = image(84, 84, seed=31)
    out = ok(generate(url, text=PROMPT, image_data=data_url(img),
                      sampling_params={**GREEDY, "n": 2}))  # fmt: skip
    want = hf.greedy(ids(hf, PROMPT), [img], NEW)
    assert [o["output_ids"] for o in out] == [want, want]
    assert all(o["meta_info"]["cached_tokens"] > 0 for o in out)


def test_offline_engine_pil_images_and_chunked_prefill(folder: Path, hf: HFQwenVL) -> None:
    """Engine.generate takes PIL images; with 8-token prefill chunks an image's span is cut
    across steps (the tower runs once, its rows land in the right chunks). The radix cache is
    off here: the tokens equal transformers' as with the cache on (the tests above)."""
    import sglang as sgl

    images = [image(112, 84, seed=41), image(56, 112, seed=42)]
    with sgl.Engine(model_path=str(folder), dtype="float32", chunked_prefill_size=8,
                    disable_radix_cache=True, log_level="warning") as llm:  # fmt: skip
        out = llm.generate(prompt=[TWO, PROMPT], image_data=[images, [images[1]]],
                           sampling_params=GREEDY)  # fmt: skip
        assert llm.get_model_info()["has_image_understanding"] is True
    assert out[0]["output_ids"] == hf.greedy(ids(hf, TWO), images, NEW)
    assert out[1]["output_ids"] == hf.greedy(ids(hf, PROMPT), [images[1]], NEW)
