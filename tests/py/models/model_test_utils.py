"""Shared helpers of the model tests: tiny random HF checkpoints and a greedy driver loop.

The driver runs the real ``sglang._core.Scheduler`` (schedule -> ForwardBatch.from_plan ->
ModelRunner.forward -> argmax -> commit), checks the core's integrity after every call, and can
record the logits of every computed token row for logprob comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sglang import _core
from sglang.srt.model_executor.forward_batch import ForwardBatch, table_as_tensor
from sglang.srt.model_executor.model_runner import ModelRunner

# Tiny-model test inputs (prompts share a 24-token prefix, which exercises prefix caching).
VOCAB = 512
PROMPT_PREFIX = [(11 * j + 5) % VOCAB for j in range(24)]
PROMPTS = [
    PROMPT_PREFIX + [(37 * i + 3 * j + 1) % VOCAB for j in range(3 + 5 * i)] for i in range(4)
]
NEW_TOKENS = 24
ARCHS = ["llama", "llama3_rope", "qwen2", "qwen3"]


def save_tiny_model(config: Any, folder: Path, seed: int = 0, std: float = 0.15) -> Path:
    """Random-weight HF causal LM of ``config`` saved as safetensors into ``folder``.

    Weights are N(0, std) (norm weights around 1) so that logits are well separated and greedy
    decoding is robust to float rounding differences between implementations.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(std * torch.randn_like(param))
    model.save_pretrained(folder)
    return folder


def hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers ``generate(do_sample=False)`` ignoring EOS: ``max_new_tokens`` ids, the
    same as the driver's ``ignore_eos=True`` requests."""
    ids = torch.tensor([prompt])
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def hf_logprobs(model: Any, seq: list[int]) -> torch.Tensor:
    """log-softmax of HF's logits at every position of ``seq`` [len(seq), vocab]."""
    with torch.inference_mode():
        logits = model(torch.tensor([seq])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


@dataclass
class GreedyDriver:
    """Greedy decoding of a ModelRunner through a real scheduler."""

    runner: ModelRunner
    overrides: dict[str, Any] = field(default_factory=dict)
    record_logits: bool = False
    outputs: dict[int, list[int]] = field(default_factory=dict)
    logits: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    retracted: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        mc = self.runner.model_config
        cfg = _core.SchedulerConfig()
        cfg.max_total_tokens = 4096
        cfg.context_length = min(mc.context_length, 1024)
        cfg.vocab_size = mc.vocab_size
        cfg.eos_token_ids = list(mc.eos_token_ids)
        for key, value in self.overrides.items():
            setattr(cfg, key, value)
        self.sched = _core.Scheduler(cfg)
        self.runner.init_kv_pool(self.sched.num_slots)
        self.table = table_as_tensor(self.sched.req_to_token())

    def add(self, prompt: list[int], max_new_tokens: int, ignore_eos: bool = True) -> int:
        return self.sched.add_request(
            np.asarray(prompt, dtype=np.int32), max_new_tokens=max_new_tokens, ignore_eos=ignore_eos
        )

    def step(self) -> None:
        plan = self.sched.schedule()
        self.sched.check_integrity()
        self.retracted += len(plan.retracted)
        if plan.mode == _core.ForwardMode.IDLE:
            return
        self.steps += 1
        all_rows = self.record_logits
        rows = np.arange(plan.num_tokens, dtype=np.int32) if all_rows else None
        batch = ForwardBatch.from_plan(plan, self.table, self.runner.device, logits_rows=rows)
        out = self.runner.forward(batch)
        logits = out.logits.cpu()
        if all_rows:
            self._record(plan, logits)
            logits = logits[torch.from_numpy(plan.sample_rows).long()]
        next_ids = logits.argmax(dim=-1).to(torch.int32).numpy()
        rids, tokens, _, _ = self.sched.commit(next_ids)
        self.sched.check_integrity()
        for rid, tok in zip(rids.tolist(), tokens.tolist()):
            if tok >= 0:
                self.outputs.setdefault(rid, []).append(tok)

    def _record(self, plan: Any, logits: torch.Tensor) -> None:
        starts = plan.extend_start.tolist()
        for i, rid in enumerate(plan.req_ids.tolist()):
            self.logits.setdefault(rid, []).append(logits[starts[i] : starts[i + 1]])

    def run(self, max_steps: int = 100000) -> None:
        for _ in range(max_steps):
            if self.sched.idle():
                break
            self.step()
        assert self.sched.idle()
        self.sched.check_integrity()

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Run all prompts together to completion; their outputs in order."""
        rids = [self.add(p, max_new_tokens) for p in prompts]
        self.run()
        return [self.outputs[r] for r in rids]


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """The Q/K row permutation of llama.cpp's ``convert_hf_to_gguf.py`` (LlamaModel.permute)."""
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama_cpp_permute_inverse(weight: np.ndarray, num_heads: int) -> np.ndarray:
    half = weight.shape[0] // num_heads // 2
    return (
        weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


_GGUF_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


# Byte offsets of the fp16 scale fields of a block, and the scale each gets in random blocks
# (small powers of two: weights of order 0.1-1, never inf/nan).
_SCALE_FIELDS = {
    "Q4_0": {0: 2**-7},
    "Q4_1": {0: 2**-7, 2: -(2**-4)},
    "Q8_0": {0: 2**-9},
    "Q4_K": {0: 2**-10, 2: 2**-10},
    "Q5_K": {0: 2**-11, 2: 2**-11},
    "Q6_K": {208: 2**-12},
}


def random_quant_blocks(qtype: Any, rows: int, cols: int, seed: int) -> np.ndarray:
    """uint8 [rows, row_bytes] of random ``qtype`` blocks with sane scales (for formats the
    ``gguf`` package cannot quantize, e.g. the K-quants)."""
    import gguf

    block, size = gguf.constants.GGML_QUANT_SIZES[qtype]
    data = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), np.uint8)
    for offset, scale in _SCALE_FIELDS[qtype.name].items():
        data[:, :, offset : offset + 2] = np.array([scale], np.float16).view(np.uint8)
    return data.reshape(rows, -1)


def write_llama_gguf(
    folder: Path, path: Path, qtypes: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Convert the tiny HF Llama in ``folder`` to a llama.cpp-style GGUF at ``path``: permuted
    Q/K rows, weights quantized per ``qtypes`` (GGUF tensor name suffix, e.g. ``"attn_q.weight"``,
    -> GGMLQuantizationType; default: the MLP in Q8_0), the rest F32. Formats ``gguf`` cannot
    quantize get random blocks instead of the HF weights. Returns the HF state dict with the
    weights the GGUF actually holds (quantization round trip applied) for a reference model."""
    import json

    import gguf
    from safetensors.torch import load_file

    Q8_0 = gguf.GGMLQuantizationType.Q8_0
    if qtypes is None:
        qtypes = {s: Q8_0 for s in ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")}

    cfg = json.loads((folder / "config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    state = load_file(str(folder / "model.safetensors"))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_eos_token_id(2)
    reference = {}
    for name, tensor in state.items():
        data = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            gguf_name = f"blk.{layer}.{_GGUF_BLOCK[rest]}"
        stored = data
        if gguf_name.endswith("attn_q.weight"):
            stored = llama_cpp_permute(data, heads)
        elif gguf_name.endswith("attn_k.weight"):
            stored = llama_cpp_permute(data, kv_heads)
        qtype = next((q for suffix, q in qtypes.items() if gguf_name.endswith(suffix)), None)
        if qtype is not None:
            try:
                packed = gguf.quants.quantize(stored, qtype)
            except NotImplementedError:
                packed = random_quant_blocks(qtype, *stored.shape, seed=len(reference))
            writer.add_tensor(gguf_name, packed, raw_dtype=qtype)
            data = gguf.quants.dequantize(packed, qtype)
            if gguf_name.endswith("attn_q.weight"):  # the reference holds HF (unpermuted) rows
                data = llama_cpp_permute_inverse(data, heads)
            elif gguf_name.endswith("attn_k.weight"):
                data = llama_cpp_permute_inverse(data, kv_heads)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(stored))
        reference[name] = torch.from_numpy(np.array(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def encode_with_two_ranks(folder: Path, prompts: list[list[int]]) -> list[torch.Tensor]:
    """The ``embedding`` of each prompt from an fp32 CPU engine with ``--tp-size 2`` (two gloo
    ranks, ``--is-embedding``)."""
    import sglang as sgl

    with sgl.Engine(model_path=str(folder), is_embedding=True, skip_tokenizer_init=True,
                    dtype="float32", random_seed=0, tp_size=2, device="cpu") as engine:
        out = engine.encode(input_ids=prompts)
    return [torch.tensor(o["embedding"]) for o in out]
