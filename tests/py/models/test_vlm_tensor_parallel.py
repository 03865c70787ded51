"""Vision-language models under tensor parallelism (--tp-size 2, two gloo ranks on the CPU).

The language model is sharded; the vision tower is replicated and runs on rank 0 only, whose
image rows (and, for Qwen2-VL, the M-RoPE positions) reach rank 1 with the step. The offline
Engine at TP 2 gives transformers' greedy tokens for tiny Qwen2-VL (one and two images, chunked
prefill cutting an image span) and LLaVA-OneVision (float32)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from vlm_utils import (
    IMAGE_PART,
    HFLlava,
    HFQwenVL,
    assert_same_as_hf,
    image,
    llava_requests,
    qwen_vl_requests,
    save_tiny_llava_onevision,
    save_tiny_qwen2_vl,
)

NEW = 6
GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}


def _run(folder: Path, prompts: list[str], images: list[list], **kw: object) -> list[dict]:
    import sglang as sgl

    with sgl.Engine(model_path=str(folder), dtype="float32", device="cpu", tp_size=2,
                    log_level="warning", **kw) as llm:
        return llm.generate(prompt=prompts, image_data=images, sampling_params=GREEDY)


def test_qwen2_vl_two_ranks(tmp_path: Path) -> None:
    folder = save_tiny_qwen2_vl(tmp_path / "qwen2_vl")
    hf = HFQwenVL(folder)
    prompts, images = qwen_vl_requests()
    out = _run(folder, prompts, images, chunked_prefill_size=8)  # chunks cut image spans
    assert_same_as_hf(out, prompts, images, hf, NEW)


def test_llava_onevision_two_ranks(tmp_path: Path) -> None:
    folder = save_tiny_llava_onevision(tmp_path / "llava")
    hf = HFLlava(folder)
    prompts, images = llava_requests()
    out = _run(folder, prompts, images)
    assert_same_as_hf(out, prompts, images, hf, NEW)


@pytest.mark.parametrize("backend", ["torch_native"])
def test_qwen2_vl_two_ranks_prefix_cache(tmp_path: Path, backend: str) -> None:
    """The same image prompt twice: the second is served from the radix cache on both ranks."""
    import sglang as sgl

    folder = save_tiny_qwen2_vl(tmp_path / "qwen2_vl_cache")
    prompt, imgs = f"What is in {IMAGE_PART}?", [image(64, 64, 3)]
    with sgl.Engine(model_path=str(folder), dtype="float32", device="cpu", tp_size=2,
                    attention_backend=backend, log_level="warning") as llm:
        first = llm.generate(prompt=prompt, image_data=imgs, sampling_params=GREEDY)
        again = llm.generate(prompt=prompt, image_data=imgs, sampling_params=GREEDY)
    assert again["meta_info"]["cached_tokens"] > 0
    assert again["output_ids"] == first["output_ids"]
