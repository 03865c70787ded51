"""Config-only model folders for ``--load-format dummy`` benchmarks (no weights, no tokenizer).

    python benchmarks/model_shapes.py OUT_DIR     # writes OUT_DIR/<name>/config.json for each shape

The shapes are the published configs of the models SGLang's GPU numbers are quoted for
(Llama-3-8B, Qwen2.5-0.5B); the GPU benchmarks (``benchmarks/gpu_run.sh``) load them with random
bf16 weights, as ``bench_one_batch --load-format dummy`` does in SGLang.
"""

from __future__ import annotations

import json
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


def write_shapes(out: Path) -> list[Path]:
    folders = []
    for name, config in SHAPES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        folders.append(folder)
    return folders


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for folder in write_shapes(Path(sys.argv[1])):
        print(folder)
