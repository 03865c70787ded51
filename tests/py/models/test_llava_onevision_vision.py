"""The LLaVA-OneVision vision side (``LlavaOnevisionVision``, ``SiglipVisionModel``,
``num_image_tokens``) against transformers on a tiny random config (fp32, 1e-4): the embeddings
transformers scatters into the ``<image>`` positions (images of several sizes and aspect ratios,
anyres tiling, unpadding, the anyres_max downscale, multi-image prompts), weight names of both
checkpoint layouts, and the ``<image>`` token count of ``LlavaOnevisionProcessor``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sglang.srt.models.llava_onevision_vision import LlavaOnevisionVision, num_image_tokens
from sglang.srt.models.siglip import SiglipVisionModel

PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
# PIL (width, height): square (4 tiles), tall, wide, very wide (padding rows cut), padding
# columns cut, padding rows cut, tiny (upscaled), one exact tile
SIZES = [(40, 40), (30, 90), (100, 50), (200, 20), (50, 70), (70, 45), (12, 10), (32, 32)]


def _config(aspect: str = "anyres_max_9", strategy: str = "full", layer: Any = -1,
            vocab: int = 64) -> Any:  # fmt: skip
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64)  # fmt: skip
    text = Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab)  # fmt: skip
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=vocab - 1,
                                image_grid_pinpoints=PINPOINTS, vision_aspect_ratio=aspect,
                                vision_feature_select_strategy=strategy,
                                vision_feature_layer=layer)  # fmt: skip


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm = "norm" in name and name.endswith("weight")
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if norm else 0.2 * torch.randn_like(p))


def _hf(config: Any) -> Any:
    from transformers import LlavaOnevisionModel

    ref = LlavaOnevisionModel(config).eval()
    _randomize(ref)
    return ref


def _ours(config: Any, ref: Any) -> LlavaOnevisionVision:
    ours = LlavaOnevisionVision(config, dtype=torch.float32)
    state = ref.state_dict().items()
    loaded = ours.load_weights((f"model.{k}", v) for k, v in state)  # transformers 5 names
    assert loaded == {n for n, _ in ours.named_parameters()}
    return ours


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from sglang.srt.hf_transformers_utils import get_tokenizer

    tok = get_tokenizer("smollm2-135m-instruct")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def _processor(tokenizer: Any, aspect: str = "anyres_max_9", strategy: str = "full") -> Any:
    """``LlavaOnevisionProcessor`` on the PIL image processor (torchvision is not installed, so
    there is no video processor class either: the argument check is skipped for it)."""
    from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    class Processor(LlavaOnevisionProcessor):
        def check_argument_for_proper_class(self, name: str, arg: Any) -> Any:
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    images = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                             image_grid_pinpoints=PINPOINTS)  # fmt: skip
    return Processor(image_processor=images, tokenizer=tokenizer, num_image_tokens=16,
                     vision_feature_select_strategy=strategy,
                     vision_aspect_ratio=aspect)  # fmt: skip


def _images(sizes: list[tuple[int, int]]) -> list[Any]:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _scattered(ref: Any, inputs: Any, image_id: int) -> torch.Tensor:
    """The rows transformers' forward writes into the ``<image>`` positions of the embeddings."""
    seen = {}

    def hook(_module: Any, _args: Any, kwargs: dict) -> None:
        seen["embeds"] = kwargs["inputs_embeds"]

    handle = ref.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        ref(**inputs)
    finally:
        handle.remove()
    return seen["embeds"][inputs["input_ids"] == image_id]


@pytest.mark.parametrize("aspect", ["anyres_max_9", "anyres_max_1"])
def test_matches_transformers(tokenizer: Any, aspect: str) -> None:
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        image_size_to_num_patches,
    )

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = _config(aspect, vocab=image_id + 1)
    ref, processor = _hf(config), _processor(tokenizer, aspect)
    ours = _ours(config, ref)
    images = _images(SIZES)
    inputs = processor(text=["x <image> y " * len(images)], images=images, return_tensors="pt")
    with torch.inference_mode():
        theirs = ref.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                        batch_num_images=inputs["batch_num_images"])  # fmt: skip
        scattered = _scattered(ref, inputs, image_id)
        out = ours(inputs["pixel_values"], inputs["image_sizes"], inputs["batch_num_images"])
        # the real tiles already concatenated; no batch_num_images (each image alone)
        counts = [image_size_to_num_patches(size, PINPOINTS, 32) for size in inputs["image_sizes"]]
        tiles = torch.cat([pv[:n] for pv, n in zip(inputs["pixel_values"], counts)])
        flat = ours(tiles, inputs["image_sizes"].tolist())
    assert len(out) == len(theirs.pooler_output) == len(images)
    for mine, hf in zip(out, theirs.pooler_output):
        torch.testing.assert_close(mine, hf, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat(out), scattered, atol=1e-4, rtol=0)
    for a, b in zip(flat, out):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for (w, h), image, mine in zip(SIZES, images, out):
        one = processor(text=["<image>"], images=[image], return_tensors="pt")
        inserted = int((one["input_ids"] == image_id).sum())
        assert num_image_tokens(config, h, w) == inserted == mine.shape[0], (w, h)
        assert num_image_tokens(config.to_dict(), h, w) == inserted
    if aspect == "anyres_max_1":  # the downscale happened: fewer than the unpadded 8x8 + 8
        assert num_image_tokens(config, 40, 40) == 16 + 4 * 5


@pytest.mark.parametrize("strategy", ["full", "default"])
def test_multi_image_prompt(tokenizer: Any, strategy: str) -> None:
    """Images sharing a prompt are one padded-to-square tile each (no anyres); "default" drops
    each tile's first feature."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = _config(strategy=strategy, vocab=image_id + 1)
    ref, processor = _hf(config), _processor(tokenizer, strategy=strategy)
    ours = _ours(config, ref)
    # transformers' anyres path cannot run "default" on SigLIP (no class token to drop): the
    # image alone in the second prompt is only there for "full"
    sizes = [(30, 90), (100, 50), (40, 40)][: 3 if strategy == "full" else 2]
    texts = ["a <image> b <image> c", "d <image>"][: len(sizes) - 1]
    images = [_images(sizes[:2]), _images(sizes[2:])][: len(texts)]
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    assert inputs["batch_num_images"].tolist() == [2, 1][: len(texts)]
    with torch.inference_mode():
        scattered = _scattered(ref, inputs, image_id)
        out = ours(inputs["pixel_values"], inputs["image_sizes"], inputs["batch_num_images"])
    torch.testing.assert_close(torch.cat(out), scattered, atol=1e-4, rtol=0)
    per_prompt = (inputs["input_ids"] == image_id).sum(-1).tolist()
    multi = [num_image_tokens(config, h, w, multi_image=True) for w, h in sizes[:2]]
    assert [len(t) for t in out[:2]] == multi and per_prompt[0] == sum(multi)
    if strategy == "full":
        assert len(out[2]) == num_image_tokens(config, 40, 40) == per_prompt[1]


def test_checkpoint_names_and_dict_config() -> None:
    """Older checkpoints (``vision_tower.vision_model.*``, no ``model.``, the language model
    under ``language_model.``) load into a model built from the config dict."""
    config = _config()
    ref = _hf(config)
    old = []
    for name, tensor in ref.state_dict().items():
        name = name.replace("vision_tower.", "vision_tower.vision_model.")
        old.append((name.replace("language_model.", "language_model.model."), tensor))
    old.append(("language_model.lm_head.weight", torch.zeros(64, 64)))
    ours = LlavaOnevisionVision(config.to_dict(), dtype=torch.float32)
    assert ours.load_weights(old) == {n for n, _ in ours.named_parameters()}
    assert not any("head." in n for n, _ in ours.named_parameters())
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 5, 3, 32, 32, generator=gen)
    sizes = torch.tensor([[40, 40], [20, 60]])
    with torch.inference_mode():
        theirs = ref.get_image_features(pixels, sizes).pooler_output
        out = ours(pixels, sizes)
    for mine, hf in zip(out, theirs):
        torch.testing.assert_close(mine, hf, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layer", [-1, -2, 0, 1, [-2, -1], None])
def test_siglip_feature_layers(layer: Any) -> None:
    """``hidden_states[layer]`` (several concatenated; None: the post-normed last state)."""
    from transformers import SiglipVisionConfig
    from transformers import SiglipVisionModel as HfSiglip

    config = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                num_attention_heads=4, intermediate_size=64)  # fmt: skip
    ref = HfSiglip(config).eval()
    _randomize(ref)
    ours = SiglipVisionModel(config, dtype=torch.float32)
    assert ours.load_weights(ref.state_dict().items()) == {n for n, _ in ours.named_parameters()}
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        hf = ref(pixels, output_hidden_states=True)
        out = ours(pixels, layer)
    if layer is None:
        want = hf.last_hidden_state
    elif isinstance(layer, int):
        want = hf.hidden_states[layer]
    else:
        want = torch.cat([hf.hidden_states[i] for i in layer], dim=-1)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        ours(pixels, 4)
