"""GGUF checkpoints: HF-style config from the metadata, and tensors with HF names.

Reads a ``.gguf`` file (llama.cpp format) with the ``gguf`` package. ``gguf_config`` builds the
dict ``ModelConfig.from_hf_config`` reads (from the ``{arch}.*`` keys); ``iter_gguf_weights``
yields ``(hf_name, tensor)`` pairs for ``load_weights``: float32 tensors, or with
``keep_quantized`` the 2-D weights in a format the CPU kernels multiply directly as
``QuantizedTensor`` (their blocks, untouched). Dequantization uses the C++ kernels for those
formats and the ``gguf`` package for the others. llama.cpp stores the Q and K projections of
Llama-architecture models with their rows permuted (rotary pairs interleaved instead of split in
halves); this undoes it (on rows of blocks when quantized), as transformers' GGUF loader does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from sglang.srt.layers.quantization import kernels
from sglang.srt.layers.quantization.weights import QuantizedTensor

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# Architectures whose converter permutes the Q/K rows (convert_hf_to_gguf.py LlamaModel).
_PERMUTED_QK = {"llama"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def _reader(path: str) -> Any:
    """The parsed file (GGUFReader memory-maps it; parsing the metadata takes seconds, so the
    config and the weights share one reader while the file is unchanged)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"Could not read GGUF file '{path}': {e}") from e
    return _cached_reader(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, size: int, mtime_ns: int) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise ValueError(f"Reading '{path}' needs the 'gguf' package (pip install gguf)") from e

    class PlainArrayReader(GGUFReader):
        """GGUFReader over a plain ndarray view of its memmap: the parser slices the file a few
        hundred thousand times, and ``np.memmap`` slices cost ~5x more than ndarray slices."""

        @property
        def data(self) -> np.ndarray:
            return self._plain_data

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain_data = np.asarray(value)

    try:
        return PlainArrayReader(path)
    except Exception as e:
        raise ValueError(f"Could not read GGUF file '{path}': {e}") from e


def _fields(reader: Any) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.split(".")[-1] in (
            "tokens",
            "merges",
            "token_type",
            "scores",
        ):
            continue
        with contextlib.suppress(Exception):  # unusual field types: not needed for a config
            out[key] = field.contents()
    return out


def gguf_config(path: str) -> dict[str, Any]:
    """HF ``config.json``-style dict built from the GGUF metadata."""
    reader = _reader(path)
    meta = _fields(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture '{arch}' of '{path}' is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    tensor_names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensor_names:
        raise ValueError(
            f"'{path}' uses per-frequency RoPE factors (rope_freqs, Llama 3.1 "
            "scaling), which are not supported for GGUF; use the HF checkpoint"
        )

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    vocab = key("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "hidden_act": "silu",
    }
    scaling = key("rope.scaling.type")
    if scaling and scaling != "none":
        config["rope_scaling"] = {"rope_type": scaling, "factor": float(key("rope.scaling.factor"))}
    return config


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF checkpoint name of a llama.cpp tensor name, None for tensors the model does not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m is None or m.group(2) not in _BLOCK_NAMES:
        return None
    return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (``num_heads`` = query or KV heads)."""
    half = weight.shape[0] // num_heads // 2
    w = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return w.swapaxes(1, 2).reshape(weight.shape)


def _dequantize(tensor: Any) -> np.ndarray:
    """float32 array of a GGUF tensor (C++ kernels for the formats they know)."""
    fmt = int(tensor.tensor_type)
    if fmt in kernels.FORMATS and tensor.data.ndim == 2:
        rows, cols = int(tensor.shape[1]), int(tensor.shape[0])
        with warnings.catch_warnings():  # a read-only memmap: the kernel only reads it
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(np.ascontiguousarray(tensor.data))
        return kernels.dequantize(data, fmt, cols).numpy().reshape(rows, cols)
    from gguf.quants import dequantize

    return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def iter_gguf_weights(
    path: str, keep_quantized: bool = False
) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
    """Yield ``(hf_name, tensor)`` for every tensor of the file the model needs: float32, or
    (``keep_quantized``) a ``QuantizedTensor`` for 2-D weights in a kernel-supported format."""
    reader = _reader(path)
    meta = _fields(reader)
    arch = meta.get("general.architecture")
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        if name is None:
            continue
        fmt = int(tensor.tensor_type)
        quantized = keep_quantized and fmt in kernels.FORMATS and tensor.data.ndim == 2
        data = np.asarray(tensor.data) if quantized else _dequantize(tensor)
        if arch in _PERMUTED_QK and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = unpermute_qk(data, heads)
        elif arch in _PERMUTED_QK and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = unpermute_qk(data, kv_heads)
        if not data.flags.writeable or not data.flags.c_contiguous:
            data = np.array(data, copy=True, order="C")  # F32 tensors are read-only memmaps
        if quantized:
            shape = (int(tensor.shape[1]), int(tensor.shape[0]))
            yield name, QuantizedTensor(torch.from_numpy(data), fmt, shape)
        else:
            yield name, torch.from_numpy(data)
