"""Image requests through the server: 16 concurrent ``/generate`` requests, each one 448x448 image
(a different image per request, sent as a PNG data URL) + a 32-token prompt, 8 new tokens, on a
random-weight Qwen2-VL made by the tests' helper (``--shape small``, the default: a 8-layer
language model of hidden size 512 and a 6-block vision tower of width 256; ``--shape tiny``: the
tests' own), its image processor allowing 448x448: 256 image tokens per request. Reports the median / p90 request latency, the requests per second,
and the preprocessing share: the median time of what the HTTP process does per image before the
engine sees it (decode the data URL, the HF image processor, placeholder expansion and M-RoPE
positions: ``ImageProcessor.process``), measured in this process on the same images, over the
median request latency. Baseline in the same run: transformers ``generate`` on the same model,
image and prompt, one request after another (its per-request time, and its time for all 16).

    python benchmarks/bench_image.py [--requests 16] [--rounds 3] [--shape small|tiny]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "py" / "server"))

from bench_encode import cpu_name
from server_utils import start_server, stop_server
from vlm_utils import IMAGE_PART, HFQwenVL, image, png_bytes, save_tiny_qwen2_vl

SIDE = 448
NEW_TOKENS = 8
SHAPES = {
    "tiny": ({}, {}),
    "small": ({"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
               "num_attention_heads": 8, "num_key_value_heads": 4,
               "rope_parameters": {"rope_type": "default", "mrope_section": [16, 8, 8],
                                   "rope_theta": 10000.0}},
              {"embed_dim": 256, "depth": 6, "num_heads": 4, "hidden_size": 512}),
}  # fmt: skip


def prompt_text(hf: HFQwenVL, i: int) -> str:
    """A prompt of 32 text tokens around the image."""
    words = " ".join(["look"] * 40)
    ids = hf.tokenizer.encode(f"Question {i}: {words}")[:30]
    return hf.tokenizer.decode(ids) + IMAGE_PART + "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    args = parser.parse_args()
    torch.set_num_threads(2)
    text_sizes, vision_sizes = SHAPES[args.shape]
    folder = save_tiny_qwen2_vl(Path(tempfile.mkdtemp()) / "qwen2-vl", max_pixels=SIDE * SIDE,
                                text_sizes=text_sizes, vision_sizes=vision_sizes)
    hf = HFQwenVL(folder)
    images = [image(SIDE, SIDE, seed=i) for i in range(args.requests)]
    urls = ["data:image/png;base64," + base64.b64encode(png_bytes(im)).decode() for im in images]
    texts = [prompt_text(hf, i) for i in range(args.requests)]
    sampling = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}

    from sglang.srt.hf_transformers_utils import get_config
    from sglang.srt.multimodal.processor import ImageProcessor

    processor = ImageProcessor.for_model("Qwen2VLForConditionalGeneration", str(folder),
                                         get_config(str(folder)), len(hf.tokenizer),
                                         hf.model.config.text_config.hidden_size)
    assert processor is not None
    pre = []
    for text, url in zip(texts, urls):
        start = time.perf_counter()
        _ids, inputs = processor.process(hf.tokenizer.encode(text), [url])
        pre.append(time.perf_counter() - start)
    image_tokens = inputs.items[0].length

    proc, base = start_server(str(folder), ["--dtype", "float32", "--log-level", "warning"])
    try:
        def one(i: int) -> float:
            start = time.perf_counter()
            r = requests.post(f"{base}/generate", timeout=600, json={
                "text": texts[i], "image_data": urls[i], "sampling_params": sampling})
            r.raise_for_status()
            return time.perf_counter() - start

        one(0)  # warm-up
        latencies, walls = [], []
        for _ in range(args.rounds):
            requests.post(f"{base}/flush_cache", timeout=60)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.requests) as pool:
                latencies += list(pool.map(one, range(args.requests)))
            walls.append(time.perf_counter() - start)
    finally:
        stop_server(proc)

    hf_times = []
    for i in range(min(args.requests, 4)):
        start = time.perf_counter()
        hf.greedy(hf.tokenizer.encode(texts[i]), [images[i]], NEW_TOKENS)
        hf_times.append(time.perf_counter() - start)

    med = statistics.median(latencies)
    p90 = sorted(latencies)[int(0.9 * (len(latencies) - 1))]
    wall = statistics.median(walls)
    hf_one = statistics.median(hf_times)
    print(f"CPU: {cpu_name()}; shape {args.shape}; {args.requests} concurrent requests x {args.rounds} rounds; "
          f"{SIDE}x{SIDE} image = {image_tokens} image tokens + 32 text tokens, "
          f"{NEW_TOKENS} new tokens")
    print(f"ours: latency median {med * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms; "
          f"{args.requests} requests in {wall:.2f} s ({args.requests / wall:.2f} req/s)")
    print(f"preprocessing (ImageProcessor.process) median {statistics.median(pre) * 1000:.1f} ms "
          f"per request = {statistics.median(pre) / med:.1%} of the median latency")
    print(f"transformers generate, one request at a time: {hf_one * 1000:.0f} ms per request, "
          f"{hf_one * args.requests:.2f} s for {args.requests}: ours "
          f"{hf_one * args.requests / wall:.2f}x faster")


if __name__ == "__main__":
    main()
