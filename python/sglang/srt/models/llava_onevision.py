"""LlavaOnevisionForConditionalGeneration: a Qwen2 language model, plus the SigLIP vision tower,
projector and any-resolution packing of ``llava_onevision_vision`` whose embeddings the engine
puts at each image's ``<image>`` positions (1-D RoPE: no position changes).

Checkpoint layouts: transformers 5 (``model.language_model.*``, ``lm_head.*``,
``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.image_newline``) and the
original one (``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.*``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.models.llama import load_stacked_weights
from sglang.srt.models.llava_onevision_vision import LlavaOnevisionVision
from sglang.srt.models.qwen2 import Qwen2ForCausalLM
from sglang.srt.multimodal.inputs import ImageItem

VISION_PARTS = ("vision_tower.", "multi_modal_projector.", "image_newline")
LANGUAGE_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                     ("language_model.lm_head.", "lm_head."))  # fmt: skip


def _text_model_type(config: ModelConfig) -> str:
    hf = config.hf_config
    text = hf.get("text_config") if isinstance(hf, dict) else getattr(hf, "text_config", None)
    if text is None:
        return ""
    return str(text.get("model_type", "") if isinstance(text, dict) else
               getattr(text, "model_type", ""))  # fmt: skip


class LlavaOnevisionForConditionalGeneration(Qwen2ForCausalLM):
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
        text_type = _text_model_type(config)
        if text_type not in ("", "qwen2"):
            raise ValueError(f"LLaVA-OneVision with a {text_type} language model is not "
                             "supported (only Qwen2)")
        super().__init__(config, dtype=dtype, device=device)
        self.vision = LlavaOnevisionVision(config.hf_config, dtype=dtype or config.dtype,
                                           device=device)  # fmt: skip

    def encode_images(self, items: list[ImageItem]) -> list[torch.Tensor]:
        """Each image's packed embeddings [its tokens, hidden] (one tower call per image: the
        images have different tile counts)."""
        weight = next(self.vision.parameters())
        out = []
        for item in items:
            pixels = torch.from_numpy(item.pixel_values)[None].to(weight.device, weight.dtype)
            out += self.vision(pixels, [list(item.image_size)],  # type: ignore[arg-type]
                               alone=[item.alone])
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        vision: list[tuple[str, torch.Tensor]] = []

        def language() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.removeprefix("model.").startswith(VISION_PARTS):
                    vision.append((name, tensor))
                    continue
                for old, new in LANGUAGE_PREFIXES:
                    if name.startswith(old):
                        name = new + name[len(old):]
                        break
                yield name, tensor

        loaded = load_stacked_weights(self, language())
        return loaded | {f"vision.{n}" for n in self.vision.load_weights(vision)}
