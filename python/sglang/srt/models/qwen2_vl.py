"""Qwen2VLForConditionalGeneration (and Qwen2.5-VL): the Qwen2 decoder with multimodal RoPE, plus the Qwen2-VL
vision transformer that turns an image's patches into embeddings at its placeholder positions.

The language model is ``Qwen2ForCausalLM``; what differs:

* ``forward``: when the batch carries ``mrope_positions`` [3, T] (an extend step over prompt rows
  of image requests) the rotary cos/sin come from the three (time, height, width) sections
  (``RotaryEmbedding.lookup_multimodal``) instead of the 1-D positions. Every other step (text,
  decode) uses 1-D positions: past the prompt the three axes are equal, so the engine shifts the
  position by the request's M-RoPE delta and the ordinary (fused, graph-captured) RoPE applies.
* ``encode_images(pixel_values, grid_thw)``: the vision tower (``qwen2_vl_vision``); the engine
  writes its rows into the step's ``input_embeds`` at each image's span.
* ``load_weights``: both checkpoint layouts, transformers 5's (``model.language_model.*``,
  ``model.visual.*``) and the original one (``model.*``, ``visual.*``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.logits_processor import LogitsOutput
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.llama import Rope, load_stacked_weights
from sglang.srt.models.qwen2 import Qwen2ForCausalLM
from sglang.srt.models.qwen2_5_vl_vision import Qwen2_5_VisionTransformer
from sglang.srt.models.qwen2_vl_vision import Qwen2VisionTransformer
from sglang.srt.multimodal.inputs import ImageItem


def vision_config(config: ModelConfig) -> Any:
    hf = config.hf_config
    vision = hf.get("vision_config") if isinstance(hf, dict) else getattr(hf, "vision_config", None)
    if vision is None:
        raise ValueError(f"{config.architecture}: the config has no vision_config")
    return vision


class Qwen2VLForConditionalGeneration(Qwen2ForCausalLM):
    vision_class: Any = Qwen2VisionTransformer
    # Read by the engine: prompts carry image spans and M-RoPE positions.
    uses_mrope = True
    # Under TP the language model is sharded; the vision tower is replicated and runs on rank 0
    # only, whose image rows reach the other ranks with the step.
    supports_tensor_parallel = True

    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(config, dtype=dtype, device=device)
        if not config.mrope_section:
            raise ValueError(f"{config.architecture}: no M-RoPE sections in the config")
        self.mrope_section = list(config.mrope_section)
        self.visual = self.vision_class(vision_config(config), dtype=dtype or config.dtype,
                                        device=device)  # fmt: skip
        self.spatial_merge_size = self.visual.merge

    def forward(self, batch: ForwardBatch) -> LogitsOutput:
        if batch.mrope_positions is None:
            return super().forward(batch)
        cos_sin = self.rotary_emb.lookup_multimodal(batch.mrope_positions, self.mrope_section)
        hidden, residual = self.model(batch, Rope(self.rotary_emb, cos_sin))
        return self.logits_processor(hidden, residual, self.model.norm, self.lm_head, batch)

    def encode_images(self, items: list[ImageItem]) -> list[torch.Tensor]:
        """Each image's embeddings [its tokens, hidden], from one vision-tower call."""
        weight = self.visual.patch_embed.proj.weight
        pixels = torch.cat([torch.from_numpy(item.pixel_values) for item in items])
        grids = [list(item.grid_thw) for item in items]  # type: ignore[arg-type]
        out = self.visual(pixels.to(weight.device, weight.dtype), grids)
        return list(out.split([item.length for item in items]))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        vision: list[tuple[str, torch.Tensor]] = []

        def language() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith(("visual.", "model.visual.")):
                    vision.append((name, tensor))
                    continue
                yield name.replace("model.language_model.", "model.", 1), tensor

        loaded = load_stacked_weights(self, language())
        return loaded | {f"visual.{n}" for n in self.visual.load_weights(vision)}


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2.5-VL: the same language model and M-RoPE for images; the vision transformer has
    window attention, RMSNorm and gated MLPs (``qwen2_5_vl_vision``)."""

    vision_class = Qwen2_5_VisionTransformer
