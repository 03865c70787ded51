"""Tiny random-weight vision-language checkpoints made at test time (transformers configs), with
the demo tokenizer plus the model family's image tokens, a chat template that renders image parts,
and the HF image processor set for small images; and transformers' reference outputs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The demo model's tokenizer (a folder with its files where the sglang cache lacks it: GPU runs).
TOKENIZER = os.environ.get("SGLANG_TEST_TOKENIZER", "smollm2-135m-instruct")

QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
IMAGE_PART = "<|vision_start|><|image_pad|><|vision_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}" + IMAGE_PART +
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)  # fmt: skip
# Images of at most 112 x 112 pixels: 16 embeddings (4 x 4 blocks of 2 x 2 patches of 14).
MIN_PIXELS, MAX_PIXELS = 28 * 28, 112 * 112


def _tokenizer() -> Any:
    from sglang.srt.hf_transformers_utils import get_tokenizer

    if os.path.isdir(TOKENIZER):  # tokenizer files only
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    else:
        tokenizer = get_tokenizer(TOKENIZER)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _randomize(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))


def save_tiny_qwen2_vl(folder: Path, seed: int = 0, version: str = "qwen2_vl",
                       max_pixels: int = MAX_PIXELS, text_sizes: dict | None = None,
                       vision_sizes: dict | None = None) -> Path:
    """A 2-layer Qwen2-VL (or Qwen2.5-VL) with a 2-block vision tower; the image processor
    resizes images to at most ``max_pixels``; ``text_sizes`` / ``vision_sizes`` override the
    configs' sizes (benchmarks)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tokenizer = _tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    text = {
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
        "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2,
        "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2],
                            "rope_theta": 10000.0},
    } | (text_sizes or {})  # fmt: skip
    special = {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }  # fmt: skip
    if version == "qwen2_vl":
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
        config = Qwen2VLConfig(text_config=text, vision_config=vision | (vision_sizes or {}),
                               **special)  # fmt: skip
        model_cls: Any = Qwen2VLForConditionalGeneration
    else:
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 4,
                  "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
                  "temporal_patch_size": 2, "window_size": 56,
                  "fullatt_block_indexes": [1]}  # fmt: skip
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision | (vision_sizes or {}),
                                  **special)  # fmt: skip
        model_cls = Qwen2_5_VLForConditionalGeneration
    model = model_cls(config).eval()
    _randomize(model, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=max_pixels).save_pretrained(folder)
    return folder


def image(width: int, height: int, seed: int) -> Any:
    """A random RGB PIL image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_bytes(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class HFQwenVL:
    """transformers' model, processor and tokenizer of a tiny checkpoint (fp32)."""

    def __init__(self, folder: Path) -> None:
        from transformers import (
            AutoModelForImageTextToText,
            AutoTokenizer,
            Qwen2VLImageProcessorPil,
        )

        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
        self.model.generation_config.eos_token_id = None
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
        self.image_token_id = self.model.config.image_token_id

    def inputs(self, prompt: list[int], images: list[Any]) -> dict[str, torch.Tensor]:
        """The expanded ids (one image token per embedding) and the processor's tensors."""
        if not images:
            input_ids = torch.tensor([prompt])
            return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        out = self.processor(images=images, return_tensors="pt")
        grids = out["image_grid_thw"].tolist()
        ids: list[int] = []
        k = 0
        for t in prompt:
            if t == self.image_token_id:
                ids += [t] * (grids[k][0] * grids[k][1] * grids[k][2] // 4)
                k += 1
            else:
                ids.append(t)
        input_ids = torch.tensor([ids])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "mm_token_type_ids": (input_ids == self.image_token_id).int(),
                "pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def greedy(self, prompt: list[int], images: list[Any], new_tokens: int) -> list[int]:
        inputs = self.inputs(prompt, images)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens,
                                      pad_token_id=0)  # fmt: skip
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    def prompt_logprobs(self, prompt: list[int], images: list[Any]) -> tuple[list[int], list[float]]:
        """The expanded ids and logprob of each token given the ones before (None-free: from the
        second token on)."""
        inputs = self.inputs(prompt, images)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        ids = inputs["input_ids"][0]
        return ids.tolist(), logp[:-1].gather(1, ids[1:, None])[:, 0].tolist()


# ---- LLaVA-OneVision ---------------------------------------------------------------------------
LLAVA_IMAGE = "<image>"
LLAVA_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]


def save_tiny_llava_onevision(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2 language model with a 2-layer SigLIP tower on 32 px tiles of 8 px
    patches (16 embeddings per tile), any-resolution grids up to 96 px."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [*QWEN_TOKENS, LLAVA_IMAGE]})
    tokenizer.chat_template = CHAT_TEMPLATE.replace(IMAGE_PART, LLAVA_IMAGE)
    text = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": len(tokenizer), "max_position_embeddings": 2048,
            "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
    vision = {"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8,
              "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64}  # fmt: skip
    config = LlavaOnevisionConfig(
        text_config=text, vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE),
        image_grid_pinpoints=LLAVA_PINPOINTS, vision_aspect_ratio="anyres_max_9",
        vision_feature_select_strategy="full", vision_feature_layer=-1)  # fmt: skip
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    _randomize(model, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                    image_grid_pinpoints=LLAVA_PINPOINTS).save_pretrained(folder)
    return folder


class HFLlava:
    """transformers' LLaVA-OneVision of a tiny checkpoint (fp32), prompts given as text."""

    def __init__(self, folder: Path) -> None:
        from transformers import (
            AutoTokenizer,
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionImageProcessorPil,
            LlavaOnevisionProcessor,
        )

        class Processor(LlavaOnevisionProcessor):  # no video processor without torchvision
            def check_argument_for_proper_class(self, name: str, arg: Any) -> Any:
                if name == "video_processor" and arg is None:
                    return None
                return super().check_argument_for_proper_class(name, arg)

        self.model = LlavaOnevisionForConditionalGeneration.from_pretrained(
            folder, dtype=torch.float32).eval()  # fmt: skip
        self.model.generation_config.eos_token_id = None
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_token_id = self.model.config.image_token_id
        self.processor = Processor(
            image_processor=LlavaOnevisionImageProcessorPil.from_pretrained(folder),
            tokenizer=self.tokenizer, num_image_tokens=16, vision_aspect_ratio="anyres_max_9",
            vision_feature_select_strategy="full")  # fmt: skip

    def inputs(self, text: str, images: list[Any]) -> dict[str, torch.Tensor]:
        if not images:
            return dict(self.tokenizer([text], return_tensors="pt"))
        return dict(self.processor(text=[text], images=[images], return_tensors="pt"))

    def greedy(self, text: str, images: list[Any], new_tokens: int) -> list[int]:
        inputs = self.inputs(text, images)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens,
                                      pad_token_id=0)  # fmt: skip
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    def prompt_logprobs(self, text: str, images: list[Any]) -> tuple[list[int], list[float]]:
        inputs = self.inputs(text, images)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        ids = inputs["input_ids"][0]
        return ids.tolist(), logp[:-1].gather(1, ids[1:, None])[:, 0].tolist()


# ---- requests the model tests share (the VLMs on CUDA, under TP) ---------------------------------
def qwen_vl_requests() -> tuple[list[str], list[list[Any]]]:
    """Two prompts with one and two images of uneven sizes, in Qwen2-VL's image markup."""
    return ([f"Describe {IMAGE_PART} please", f"Compare {IMAGE_PART} and {IMAGE_PART}"],
            [[image(90, 60, 0)], [image(56, 112, 1), image(84, 84, 2)]])


def llava_requests() -> tuple[list[str], list[list[Any]]]:
    """Two prompts with one and two images of uneven sizes, in LLaVA's image markup."""
    return (["Describe <image> please", "Compare <image> and <image>"],
            [[image(70, 45, 0)], [image(40, 40, 1), image(30, 90, 2)]])


def assert_same_as_hf(outs: list[dict], prompts: list[str], images: list[list[Any]],
                      hf: HFQwenVL | HFLlava, new_tokens: int) -> None:
    """Each output's greedy ids equal transformers' for its prompt and images."""
    for item, text, imgs in zip(outs, prompts, images, strict=True):
        prompt = hf.tokenizer.encode(text) if isinstance(hf, HFQwenVL) else text
        assert item["output_ids"] == hf.greedy(prompt, imgs, new_tokens)
