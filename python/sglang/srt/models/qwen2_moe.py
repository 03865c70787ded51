"""Qwen2MoeForCausalLM (Qwen1.5-MoE, Qwen2-57B-A14B): the Llama decoder (q/k/v biases, as Qwen2)
whose feed-forward blocks are sparse mixture-of-experts blocks.

A sparse block routes each token to ``num_experts_per_tok`` of ``num_experts`` experts
(``gate`` router -> ``layers.moe.topk.select_experts``), runs them grouped by expert
(``experts``, a ``FusedMoE``) and adds the ``shared_expert`` (a dense MLP every token runs)
scaled by ``sigmoid(shared_expert_gate(x))``. It reports each routing decision to the
expert-distribution recorder. Layers listed in ``mlp_only_layers``, or off the
``decoder_sparse_step`` grid, keep a dense MLP of ``intermediate_size``, as in transformers.

Checkpoint tensors keep their HF names: experts per expert (``mlp.experts.<e>.gate_proj.weight``
...) or stacked (``mlp.experts.gate_up_proj`` [E, 2I, H], ``mlp.experts.down_proj`` [E, H, I]);
the rest as in the Llama loader. Same inputs and outputs as ``llama.LlamaForCausalLM``.

Under tensor parallelism the router is replicated, every rank holds every expert's slice of the
intermediate dimension (and its slice of the shared expert), and the block's output is summed
over the ranks once, after the experts' combine and the gated shared expert.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.distributed.parallel_state import get_tp_group
from sglang.srt.eplb.expert_distribution import MoeLayout, get_global_expert_distribution_recorder
from sglang.srt.layers.linear import Linear
from sglang.srt.layers.moe.fused_moe import FusedMoE
from sglang.srt.layers.moe.topk import RouterLinear, select_experts
from sglang.srt.layers.quantization.weights import QuantizedTensor
from sglang.srt.models.llama import (
    AttentionOptions,
    LlamaForCausalLM,
    LlamaMLP,
    load_stacked_weights,
)

# model.layers.<n>.mlp.experts.<e>.<proj>.weight (per expert) / ...mlp.experts.<param> (stacked)
_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
_STACKED = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def _hf_dict(config: ModelConfig) -> dict[str, Any]:
    hf = config.hf_config
    return hf.to_dict() if hasattr(hf, "to_dict") else dict(hf or {})


@dataclass(frozen=True)
class MoeConfig:
    """The mixture-of-experts fields of a Qwen2-MoE / Qwen3-MoE HF config."""

    num_experts: int
    top_k: int
    moe_intermediate_size: int
    norm_topk_prob: bool
    shared_expert_intermediate_size: int  # 0: no shared expert
    mlp_only_layers: tuple[int, ...]
    decoder_sparse_step: int

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> MoeConfig:
        cfg = _hf_dict(config)
        num_experts = cfg.get("num_experts") or cfg.get("num_local_experts")
        if not num_experts or not cfg.get("num_experts_per_tok"):
            raise ValueError(f"{config.architecture}: the config names no experts")
        return cls(
            num_experts=int(num_experts),
            top_k=int(cfg["num_experts_per_tok"]),
            moe_intermediate_size=int(cfg["moe_intermediate_size"]),
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
            shared_expert_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
            mlp_only_layers=tuple(int(i) for i in cfg.get("mlp_only_layers") or ()),
            decoder_sparse_step=int(cfg.get("decoder_sparse_step") or 1),
        )

    def is_sparse(self, layer_id: int) -> bool:
        """Whether decoder layer ``layer_id`` has an MoE block (transformers' rule)."""
        return (
            layer_id not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer_id + 1) % self.decoder_sparse_step == 0
        )


class SparseMoeBlock(nn.Module):
    """Router, experts and (optionally) a gated shared expert: [T, H] -> [T, H]."""

    # --enable-torch-compile leaves this block eager (data-dependent routing, the recorder's
    # host-side hook); the model's dense MLP layers are still compiled.
    compilable = False

    def __init__(
        self, config: ModelConfig, moe: MoeConfig, layer_id: int, shared: bool, **kw: Any
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.top_k = moe.top_k
        self.norm_topk_prob = moe.norm_topk_prob
        hidden = config.hidden_size
        self.tp = get_tp_group()
        self.gate = RouterLinear(hidden, moe.num_experts, **kw)
        self.experts = FusedMoE(moe.num_experts, hidden, moe.moe_intermediate_size, **kw)
        self.experts.top_k = moe.top_k
        self.shared_expert: LlamaMLP | None = None
        self.shared_expert_gate: Linear | None = None
        if shared and moe.shared_expert_intermediate_size:
            self.shared_expert = LlamaMLP(
                config, moe.shared_expert_intermediate_size, reduce_results=False, **kw
            )
            self.shared_expert_gate = Linear(hidden, 1, **kw)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = select_experts(self.gate(hidden), self.top_k, self.norm_topk_prob)
        get_global_expert_distribution_recorder().on_select_experts(self.layer_id, topk_ids)
        out = self.experts(hidden, topk_weights, topk_ids)
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            shared = self.shared_expert(hidden)
            out += torch.sigmoid(self.shared_expert_gate(hidden)) * shared
        return self.tp.all_reduce(out)  # the ranks' partial sums (nothing to do on one rank)


class Qwen2MoeForCausalLM(LlamaForCausalLM):
    has_shared_expert = True

    @classmethod
    def attention_options(cls, config: ModelConfig) -> AttentionOptions:
        qkv_bias = bool(_hf_dict(config).get("qkv_bias", True))
        return AttentionOptions(qkv_bias=qkv_bias, o_bias=False, qk_norm=False)

    def make_mlp(self, config: ModelConfig, layer_id: int, **kw: object) -> nn.Module:
        moe = MoeConfig.from_model_config(config)
        if moe.is_sparse(layer_id):
            return SparseMoeBlock(config, moe, layer_id, self.has_shared_expert, **kw)
        return LlamaMLP(config, **kw)

    def moe_layout(self) -> MoeLayout:
        """The decoder layers and experts, for the expert-distribution recorder."""
        moe = MoeConfig.from_model_config(self.config)
        return MoeLayout(self.config.num_hidden_layers, moe.num_experts, moe.top_k)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The Llama loader, with expert tensors copied into their ``FusedMoE`` first (their
        ``gate_proj`` / ``up_proj`` names would otherwise match the dense MLP's stacking)."""
        return load_moe_weights(self, weights)


def load_moe_weights(
    model: LlamaForCausalLM, weights: Iterable[tuple[str, torch.Tensor | QuantizedTensor]]
) -> set[str]:
    loaded: set[str] = set()

    def dense() -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        for name, tensor in weights:
            per_expert, stacked = _EXPERT.match(name), _STACKED.match(name)
            if isinstance(tensor, QuantizedTensor) and (per_expert or stacked):
                tensor = tensor.dequantize()  # experts are kept dense
            if per_expert is not None:
                prefix, expert, shard = per_expert.groups()
                key = _experts(model, prefix, name).load_expert_weight(int(expert), shard, tensor)
                loaded.add(f"{prefix}.{key}")
            elif stacked is not None:
                prefix, param = stacked.groups()
                names = _experts(model, prefix, name).load_fused_weight(param, tensor)
                loaded.update(f"{prefix}.{n}" for n in names)
            else:
                yield name, tensor

    loaded |= load_stacked_weights(model, dense())
    return loaded


def _experts(model: nn.Module, prefix: str, hf_name: str) -> FusedMoE:
    try:
        module = model.get_submodule(prefix)
    except AttributeError:
        module = None
    if isinstance(module, FusedMoE):
        return module
    raise ValueError(f"Checkpoint tensor '{hf_name}' has no matching model parameter")
