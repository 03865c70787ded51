"""Vision-language models on CUDA (``gpu``-marked): the offline Engine on the GPU (triton
attention, CUDA graphs for decode, M-RoPE prompt steps then shifted 1-D positions in the graphs)
gives transformers' greedy tokens (float32, transformers on the CPU) for tiny Qwen2-VL, Qwen2.5-VL
and LLaVA-OneVision, with one and two images, chunked prefill cutting an image span, and a
repeated request served from the radix cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from vlm_utils import (
    HFLlava,
    HFQwenVL,
    assert_same_as_hf,
    llava_requests,
    qwen_vl_requests,
    save_tiny_llava_onevision,
    save_tiny_qwen2_vl,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]  # fmt: skip
NEW = 8
GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}


def _run(folder: Path, prompts: list[str], images: list[list], **kw: object) -> list[dict]:
    import sglang as sgl

    with sgl.Engine(model_path=str(folder), dtype="float32", log_level="warning", **kw) as llm:
        first = llm.generate(prompt=prompts, image_data=images, sampling_params=GREEDY)
        again = llm.generate(prompt=prompts[0], image_data=images[0], sampling_params=GREEDY)
        assert again["meta_info"]["cached_tokens"] > 0
        assert again["output_ids"] == first[0]["output_ids"]
        assert llm.tokenizer_manager.info.device.startswith("cuda")
    return first


@pytest.mark.parametrize("version,chunk", [("qwen2_vl", None), ("qwen2_vl", 8),
                                           ("qwen2_5_vl", None)])  # fmt: skip
def test_qwen2_vl_on_cuda(tmp_path: Path, version: str, chunk: int | None) -> None:
    folder = save_tiny_qwen2_vl(tmp_path / version, version=version)
    hf = HFQwenVL(folder)
    prompts, images = qwen_vl_requests()
    kw = {} if chunk is None else {"chunked_prefill_size": chunk}
    out = _run(folder, prompts, images, **kw)
    assert_same_as_hf(out, prompts, images, hf, NEW)


def test_llava_onevision_on_cuda(tmp_path: Path) -> None:
    folder = save_tiny_llava_onevision(tmp_path / "llava")
    hf = HFLlava(folder)
    prompts, images = llava_requests()
    out = _run(folder, prompts, images)
    assert_same_as_hf(out, prompts, images, hf, NEW)
