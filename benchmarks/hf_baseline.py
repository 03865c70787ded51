"""HF transformers baseline, measured in the same run as our benchmarks.

Loads the same checkpoint our engine serves: ``--model-path`` goes through
``sglang.srt.model_loader.resolve`` (so the demo alias ``smollm2-135m-instruct`` means the same GGUF
file); a GGUF checkpoint is built as the transformers class of its architecture from the config and
the dequantized tensors our loader produces (``gguf_config`` / ``iter_gguf_weights``), an HF folder
with ``AutoModelForCausalLM.from_pretrained``. fp32 on CPU by default. Runs greedy
``generate(do_sample=False)`` on random prompts of ``--input-len`` ids, forcing ``--output-len``
new tokens; every batch holds identical prompts. Reports, per batch size, the prefill time (a
one-token ``generate``), end-to-end output tok/s, and decode tok/s (tokens after the first over
the time after the prefill). ``--output-file`` appends one JSON line per batch size.

Usage::

    python benchmarks/hf_baseline.py --model-path smollm2-135m-instruct --batch-sizes 1 16 \\
        --input-len 128 --output-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch


def build_model(model_path: str, dtype: torch.dtype) -> Any:
    """The transformers model of ``model_path`` with the same weights our loader reads."""
    from sglang.srt.model_loader.resolve import resolve_model_path
    from transformers import AutoModelForCausalLM

    source = resolve_model_path(model_path)
    if not source.is_gguf:
        model = AutoModelForCausalLM.from_pretrained(source.folder, dtype=dtype)
        return model.eval()
    return _model_from_gguf(source.path, dtype)


def _model_from_gguf(path: str, dtype: torch.dtype) -> Any:
    from sglang.srt.model_loader.gguf_file import gguf_config, iter_gguf_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(gguf_config(path))
    cfg.pop("architectures", None)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = dict(iter_gguf_weights(path))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    result = model.load_state_dict(state, strict=False)
    missing = [
        n for n in result.missing_keys if not (config.tie_word_embeddings and n == "lm_head.weight")
    ]
    if missing:
        raise ValueError(f"'{path}' lacks {len(missing)} tensors: {', '.join(missing[:8])}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype).eval()


def prompt_ids(vocab_size: int, input_len: int, batch_size: int, seed: int) -> torch.Tensor:
    """``batch_size`` identical rows of ``input_len`` random ids (the special ids at the start of
    the vocabulary are skipped)."""
    gen = torch.Generator().manual_seed(seed)
    row = torch.randint(min(100, vocab_size - 1), vocab_size, (1, input_len), generator=gen)
    return row.repeat(batch_size, 1)


def timed_generate(model: Any, ids: torch.Tensor, new_tokens: int) -> tuple[float, int]:
    """Seconds for a greedy ``generate`` of exactly ``new_tokens`` tokens; and tokens made."""
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )
    return time.perf_counter() - start, int(out.shape[1] - ids.shape[1])


def bench_batch(
    model: Any, batch_size: int, input_len: int, output_len: int, seed: int, repeats: int
) -> dict[str, Any]:
    ids = prompt_ids(model.config.vocab_size, input_len, batch_size, seed)
    prefill = statistics.median(timed_generate(model, ids, 1)[0] for _ in range(repeats))
    runs = [timed_generate(model, ids, output_len) for _ in range(repeats)]
    total = statistics.median(t for t, _ in runs)
    made = runs[0][1]
    decode_time = max(total - prefill, 1e-9)
    return {
        "batch_size": batch_size,
        "input_len": input_len,
        "output_len": made,
        "prefill_latency": prefill,
        "total_latency": total,
        "output_throughput": batch_size * made / total,
        "decode_throughput": batch_size * (made - 1) / decode_time,
        "decode_step_latency": decode_time / max(made - 1, 1),
    }


def format_result(r: dict[str, Any]) -> str:
    return (
        f"HF transformers bs={r['batch_size']} in={r['input_len']} out={r['output_len']}: "
        f"prefill {r['prefill_latency'] * 1e3:.1f} ms, "
        f"decode {r['decode_step_latency'] * 1e3:.1f} ms/step "
        f"({r['decode_throughput']:.1f} tok/s), "
        f"end-to-end {r['output_throughput']:.1f} output tok/s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=1, help="Median over this many runs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-file", default=None)
    args = parser.parse_args(argv)

    model = build_model(args.model_path, getattr(torch, args.dtype))
    warm = prompt_ids(model.config.vocab_size, 8, 1, args.seed)
    timed_generate(model, warm, 2)
    meta = {
        "bench": "hf_baseline",
        "model_path": args.model_path,
        "dtype": args.dtype,
        "num_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_1m": os.getloadavg()[0],
    }
    for bs in args.batch_sizes:
        result = {
            **meta,
            **bench_batch(model, bs, args.input_len, args.output_len, args.seed, args.repeats),
        }
        print(format_result(result), flush=True)
        if args.output_file:
            with open(args.output_file, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
