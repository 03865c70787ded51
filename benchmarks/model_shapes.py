"""Config-only model folders for ``--load-format dummy`` benchmarks (no weights, no tokenizer).

    python benchmarks/model_shapes.py OUT_DIR [TOKENIZER_DIR]

writes OUT_DIR/<name>/config.json for each shape, and copies the tokenizer files of TOKENIZER_DIR
(any HF tokenizer folder, e.g. the demo model's) beside it for the benchmarks that tokenize
(``bench_offline_throughput``, ``bench_serving``); their random prompts stay inside that
tokenizer's vocabulary, which must not be larger than the model's.

The shapes are the published configs of the models SGLang's GPU numbers are quoted for
(Llama-3-8B, Qwen2.5-0.5B); the GPU benchmarks (``benchmarks/gpu_run.sh``) load them with random
bf16 weights, as ``bench_one_batch --load-format dummy`` does in SGLang.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

SHAPES: dict[str, dict] = {
    "llama-3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "torch_dtype": "bfloat16",
    },
}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")  # fmt: skip


def write_shapes(out: Path, tokenizer: Path | None = None) -> list[Path]:
    folders = []
    for name, config in SHAPES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for file in TOKENIZER_FILES if tokenizer else ():
            if (tokenizer / file).is_file():
                shutil.copy(tokenizer / file, folder / file)
        folders.append(folder)
    return folders


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    tok = Path(sys.argv[2]) if len(sys.argv) == 3 else None
    for folder in write_shapes(Path(sys.argv[1]), tok):
        print(folder)
