"""Llama-family decoder (LlamaForCausalLM, also SmolLM2), the base of Qwen2 and Qwen3.

Built from a ``ModelConfig``; weights come from ``load_weights`` with HF checkpoint names (q/k/v
are fused into ``qkv_proj`` and gate/up into ``gate_up_proj`` as they are copied). ``forward``
takes a ForwardBatch (token ids or ``input_embeds``, positions, KV addressing) and returns the
LogitsOutput of ``batch.logits_rows``. Variants differ in ``AttentionOptions`` (q/k/v and o
biases, per-head q/k RMSNorm before RoPE) and, for mixture-of-experts models, in the feed-forward
block of each layer (``make_mlp``).

Under tensor parallelism (the TP group current while the model is built, see
``distributed.parallel_state``) each rank holds its attention heads and KV heads (q/k/v
column-parallel, o_proj row-parallel), its slice of the MLP (gate/up column-parallel, down
row-parallel), its vocabulary slice of the embedding and LM head; the loaders cut each rank's
part out of the full checkpoint tensors. Every rank's ``forward`` returns the full logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.distributed.parallel_state import get_tp_group, split_heads
from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.decode_layers_cpu import FusedDecodeLayers
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.linear import Linear
from sglang.srt.layers.logits_processor import LogitsOutput, LogitsProcessor
from sglang.srt.layers.moe.fused_moe import FusedMoE
from sglang.srt.layers.parallel_linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
)
from sglang.srt.layers.quantization.weights import QuantizedTensor
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.rotary_embedding import RotaryEmbedding
from sglang.srt.layers.vocab_embedding import VocabEmbedding, VocabParallelEmbedding
from sglang.srt.model_executor.forward_batch import ForwardBatch

# (fused parameter, checkpoint projection, shard)
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", "gate"),
    ("gate_up_proj", "up_proj", "up"),
)


@dataclass(frozen=True)
class Rope:
    """The model's rotary embedding and this step's looked-up (cos, sin) rows; ``cos_sin`` is
    None when the attention backend applies RoPE itself (fused with the KV-cache store)."""

    emb: RotaryEmbedding
    cos_sin: tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True)
class AttentionOptions:
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool


class LlamaMLP(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        intermediate_size: int | None = None,
        reduce_results: bool = True,
        **kw: object,
    ) -> None:
        """``reduce_results=False``: under TP, ``forward`` returns this rank's partial sum (the
        caller all-reduces)."""
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"Unsupported activation '{config.hidden_act}'; only silu is")
        inter = intermediate_size or config.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(
            config.hidden_size,
            2 * inter,
            config.mlp_bias,
            shards={"gate": inter, "up": inter},
            **kw,
        )
        self.down_proj = RowParallelLinear(
            inter, config.hidden_size, config.mlp_bias, reduce_results=reduce_results, **kw
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(
        self, config: ModelConfig, layer_id: int, options: AttentionOptions, **kw: object
    ) -> None:
        super().__init__()
        # This rank's heads (all of them without tensor parallelism).
        self.num_heads, self.num_kv_heads = split_heads(
            config.num_attention_heads, config.num_key_value_heads, get_tp_group().size
        )
        self.head_dim = d = config.head_dim
        self.q_size, self.kv_size = self.num_heads * d, self.num_kv_heads * d
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            d,
            config.num_attention_heads,
            config.num_key_value_heads,
            options.qkv_bias,
            **kw,
        )
        self.o_proj = RowParallelLinear(config.q_size, config.hidden_size, options.o_bias, **kw)
        self.q_norm = self.k_norm = None
        if options.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps, **kw)  # type: ignore[arg-type]
            self.k_norm = RMSNorm(d, config.rms_norm_eps, **kw)  # type: ignore[arg-type]
        self.attn = RadixAttention(layer_id, self.num_heads, self.num_kv_heads, d, d**-0.5)

    def forward(self, hidden: torch.Tensor, rope: Rope, batch: ForwardBatch) -> torch.Tensor:
        t, d = hidden.shape[0], self.head_dim
        qkv = self.qkv_proj(hidden)
        qk_size = self.q_size + self.kv_size
        v = qkv[:, qk_size:].view(t, self.num_kv_heads, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = qkv[:, :qk_size].split([self.q_size, self.kv_size], dim=-1)
            qk = torch.cat([self.q_norm(q.view(t, -1, d)), self.k_norm(k.view(t, -1, d))], 1)
        else:
            qk = qkv[:, :qk_size].view(t, self.num_heads + self.num_kv_heads, d)
        if rope.cos_sin is None:  # the backend rotates q/k as it stores k/v
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
            return self.o_proj(self.attn.forward_rope(q, k, v, rope.emb, batch))
        # One rotation for the heads of q and k together (same positions, same cos/sin).
        qk = RotaryEmbedding.apply(qk, rope.cos_sin)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        return self.o_proj(self.attn(q, k, v, batch))


# (config, layer_id, dtype=, device=) -> the feed-forward block of that decoder layer
MlpFactory = Callable[..., nn.Module]


def dense_mlp(config: ModelConfig, layer_id: int, **kw: object) -> nn.Module:
    return LlamaMLP(config, **kw)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        options: AttentionOptions,
        make_mlp: MlpFactory = dense_mlp,
        **kw: object,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, options, **kw)
        self.mlp = make_mlp(config, layer_id, **kw)
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, **kw)  # type: ignore[arg-type]
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, **kw)  # type: ignore[arg-type]
        # --enable-torch-compile: the MLP compiled by inductor, for batches up to its max size;
        # an MLP with ``compilable = False`` (an MoE block: data-dependent routing, the
        # recorder's host-side hook) stays eager.
        self.compiled_mlp: nn.Module | None = None
        self.compiled_max_tokens = 0
        self.mlp_compilable: bool = getattr(self.mlp, "compilable", True)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope: Rope,
        batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, rope, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        compiled = self.compiled_mlp if self.mlp_compilable else None
        if compiled is not None and hidden.shape[0] <= self.compiled_max_tokens:
            return compiled(hidden), residual
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        options: AttentionOptions,
        make_mlp: MlpFactory = dense_mlp,
        **kw: object,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, **kw)  # type: ignore[arg-type]
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, options, make_mlp, **kw)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)  # type: ignore[arg-type]
        # Set by the ModelRunner on CPU: runs a decode step's layers in one C++ call.
        self.fused_decode: FusedDecodeLayers | None = None

    def forward(self, batch: ForwardBatch, rope: Rope) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the last layer's output and the residual stream (final norm not applied)."""
        if batch.input_embeds is not None:
            # A copy: the fused norms update the residual stream in place.
            hidden = batch.input_embeds.to(self.embed_tokens.weight.dtype, copy=True)
        else:
            hidden = self.embed_tokens(batch.input_ids)
        fused = self.fused_decode
        if fused is not None and hidden.dtype == torch.float32 and fused.accepts(batch):
            return fused.run(batch, hidden, rope.emb)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, rope, batch)
        return hidden, residual


class LlamaForCausalLM(nn.Module):
    """Llama / SmolLM2 / Mistral-style (no sliding window) causal LM."""

    # Runs sharded over TP ranks (tested against one rank for Llama, Qwen2, Qwen3 and the MoE
    # models; subclasses with other heads or towers say False until they are tested).
    supports_tensor_parallel = True

    @classmethod
    def attention_options(cls, config: ModelConfig) -> AttentionOptions:
        return AttentionOptions(config.attention_bias, config.attention_bias, qk_norm=False)

    def make_mlp(self, config: ModelConfig, layer_id: int, **kw: object) -> nn.Module:
        """The feed-forward block of decoder layer ``layer_id`` (MoE models override this)."""
        return dense_mlp(config, layer_id, **kw)

    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        dtype = dtype or config.dtype
        kw = {"dtype": dtype, "device": device}
        self.model = LlamaModel(config, self.attention_options(config), self.make_mlp, **kw)
        self.lm_head: nn.Module = self.model.embed_tokens
        if not config.tie_word_embeddings:
            self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size, **kw)
        self.rotary_emb = RotaryEmbedding(
            config.head_dim, config.context_length, config.rope, dtype=dtype, device=device
        )
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, batch: ForwardBatch) -> LogitsOutput:
        fused = getattr(batch.attn_backend, "fuses_rope", False)
        cos_sin = None if fused else self.rotary_emb.lookup(batch.positions)
        hidden, residual = self.model(batch, Rope(self.rotary_emb, cos_sin))
        return self.logits_processor(hidden, residual, self.model.norm, self.lm_head, batch)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named checkpoint tensors into the parameters; returns the names filled."""
        return load_stacked_weights(self, weights)


def load_stacked_weights(
    model: LlamaForCausalLM, weights: Iterable[tuple[str, torch.Tensor | QuantizedTensor]]
) -> set[str]:
    params = dict(model.named_parameters())
    tied = model.config.tie_word_embeddings
    loaded: set[str] = set()
    for hf_name, tensor in weights:
        if "rotary_emb.inv_freq" in hf_name or "rotary_emb.cos_cached" in hf_name:
            continue
        name = hf_name
        if tied and name == "lm_head.weight":
            name = "model.embed_tokens.weight"
            if name in loaded:
                continue  # the embedding already filled the shared tensor
        for fused, proj, shard in STACKED_PARAMS:
            if f".{proj}." in name:
                fused_name = name.replace(f".{proj}.", f".{fused}.")
                module = model.get_submodule(fused_name.rsplit(".", 1)[0])
                assert isinstance(module, Linear)
                module.load_shard(_param(params, fused_name, hf_name), shard, tensor)
                loaded.add(f"{fused_name}:{shard}")
                break
        else:
            param = _param(params, name, hf_name)
            module = model.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(tensor, QuantizedTensor):
                if isinstance(module, Linear):
                    module.load_shard(param, None, tensor)
                    loaded.add(name)
                    continue
                if isinstance(module, VocabEmbedding):
                    module.load_quantized(tensor)
                    loaded.add(name)
                    continue
                tensor = tensor.dequantize()
            rank_slice = getattr(module, "checkpoint_slice", None)  # this TP rank's part
            if rank_slice is not None:
                tensor = rank_slice(param, tensor)
            if param.shape != tensor.shape:
                raise ValueError(
                    f"{hf_name}: checkpoint shape {tuple(tensor.shape)}, "
                    f"model expects {tuple(param.shape)}"
                )
            param.data.copy_(tensor)
            loaded.add(name)
    return loaded


def _param(params: dict[str, nn.Parameter], name: str, hf_name: str) -> nn.Parameter:
    if name not in params:
        raise ValueError(f"Checkpoint tensor '{hf_name}' has no matching model parameter")
    return params[name]


def expected_weight_names(model: nn.Module) -> set[str]:
    """What ``load_weights`` returns after a complete checkpoint (fused params per shard)."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if isinstance(module, Linear) and module.shard_offsets:
                names.update(f"{full}:{s}" for s in module.shard_offsets)
            elif isinstance(module, FusedMoE):  # per expert and projection
                names.update(f"{full}:{s}" for s in module.shard_names(pname))
            else:
                names.add(full)
    return names
