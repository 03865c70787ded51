"""The Qwen2-VL vision transformer (issue 14 building block) against transformers'
``Qwen2VisionTransformerPretrainedModel`` on tiny random weights (fp32, 1e-4): images of
different sizes and aspect ratios in one call, a video-like grid with two frames, and the
processor's patch order for the 2-D positions."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.models.qwen2_vl_vision import Qwen2VisionTransformer, vision_positions


def _tiny() -> tuple[object, torch.nn.Module]:
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    config = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=2,
                                 patch_size=4, temporal_patch_size=2, spatial_merge_size=2)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    ref = Qwen2VisionTransformerPretrainedModel(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.normal_(1.0 if "norm" in name or "ln_q" in name else 0.0, 0.1 if "norm" in name
                      or "ln_q" in name else 0.2)  # fmt: skip
    return config, ref


@pytest.mark.parametrize("grids", [[[1, 4, 6]], [[1, 4, 6], [1, 2, 2], [1, 6, 4]], [[2, 2, 4]]])
def test_matches_transformers(grids: list[list[int]]) -> None:
    config, ref = _tiny()
    ours = Qwen2VisionTransformer(config, dtype=torch.float32)
    loaded = ours.load_weights((f"model.visual.{k}", v) for k, v in ref.state_dict().items())
    assert loaded == {n for n, _ in ours.named_parameters()}
    patches = sum(t * h * w for t, h, w in grids)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(patches, 3 * 2 * 4 * 4, generator=gen)
    with torch.inference_mode():
        theirs = ref(pixels, grid_thw=torch.tensor(grids)).pooler_output
        out = ours(pixels, grids)
    assert out.shape == (patches // 4, 48)
    torch.testing.assert_close(out, theirs, atol=1e-4, rtol=0)


def test_positions_follow_the_merge_blocks() -> None:
    pos = vision_positions([[1, 2, 4]], 2).tolist()
    # 2x2 blocks left to right: (0,0) (0,1) (1,0) (1,1), then (0,2) (0,3) (1,2) (1,3)
    assert pos == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]


def test_grid_must_cover_the_patches() -> None:
    config, _ = _tiny()
    ours = Qwen2VisionTransformer(config, dtype=torch.float32)
    with pytest.raises(ValueError, match="covers 24 patches"):
        ours(torch.zeros(20, 96), [[1, 4, 6]])


def test_every_tensor_is_made_on_the_given_device() -> None:
    """The model is built on its device (CUDA in serving): no buffer may stay on the CPU."""
    config, _ = _tiny()
    ours = Qwen2VisionTransformer(config, dtype=torch.float32, device="meta")
    assert {t.device.type for t in [*ours.parameters(), *ours.buffers()]} == {"meta"}
