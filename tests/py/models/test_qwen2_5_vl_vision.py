"""The Qwen2.5-VL vision transformer (issue 14 building block) against transformers'
``Qwen2_5_VisionTransformerPretrainedModel`` on tiny random weights (fp32, 1e-4): window attention
with full-attention blocks in between, images of different sizes and aspect ratios in one call
(grids that do not divide into whole windows), a video-like grid with two frames, and the window
partition itself."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.models.qwen2_5_vl_vision import Qwen2_5_VisionTransformer, window_order


def _tiny() -> tuple[object, torch.nn.Module]:
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
    )

    # window_size 16 / patch 4 / merge 2: windows of 2x2 merge blocks (4x4 patches)
    config = Qwen2_5_VLVisionConfig(depth=4, fullatt_block_indexes=[1, 3], hidden_size=32,
                                    intermediate_size=48, num_heads=4, out_hidden_size=48,
                                    patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
                                    window_size=16)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    ref = Qwen2_5_VisionTransformerPretrainedModel(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            norm = "norm" in name or "ln_q" in name
            p.normal_(1.0 if norm else 0.0, 0.1 if norm else 0.2)
    return config, ref


GRIDS = [
    [[1, 8, 8]],  # whole windows
    [[1, 6, 10], [1, 2, 2], [1, 10, 4]],  # 3x5, 1x1 and 5x2 merge blocks: partial windows
    [[2, 6, 4]],  # two frames, each with a partial window row
    [[1, 4, 12], [2, 2, 6]],
]


@pytest.mark.parametrize("grids", GRIDS)
def test_matches_transformers(grids: list[list[int]]) -> None:
    config, ref = _tiny()
    ours = Qwen2_5_VisionTransformer(config, dtype=torch.float32)
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


def test_config_as_dict_and_visual_prefix() -> None:
    config, ref = _tiny()
    raw = config.to_dict()  # spelled as the checkpoint's config.json: ``in_chans``
    raw["in_chans"] = raw.pop("in_channels")
    ours = Qwen2_5_VisionTransformer(raw, dtype=torch.float32)
    loaded = ours.load_weights((f"visual.{k}", v) for k, v in ref.state_dict().items())
    assert loaded == {n for n, _ in ours.named_parameters()}
    assert ours.full_blocks == {1, 3} and ours.window == 2
    pixels = torch.randn(6 * 10, 96)
    with torch.inference_mode():
        theirs = ref(pixels, grid_thw=torch.tensor([[1, 6, 10]])).pooler_output
        torch.testing.assert_close(ours(pixels, [[1, 6, 10]]), theirs, atol=1e-4, rtol=0)


def test_window_partition_matches_transformers() -> None:
    from transformers.vision_utils import get_vision_window_index

    for grids in GRIDS:
        theirs, cu = get_vision_window_index(torch.tensor(grids), 2, 16, 4)
        order, lengths = window_order(grids, 2, 2)
        assert order.tolist() == theirs.tolist()
        assert [0, *torch.tensor(lengths).cumsum(0).tolist()] == cu.tolist()


def test_window_partition_pads_the_edges() -> None:
    # 3x3 merge blocks, windows of 2x2: a full window, a 2x1, a 1x2 and a 1x1
    order, lengths = window_order([[1, 6, 6]], 2, 2)
    assert order.tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]
    assert lengths == [16, 8, 8, 4]


def test_grid_must_cover_the_patches() -> None:
    config, _ = _tiny()
    ours = Qwen2_5_VisionTransformer(config, dtype=torch.float32)
    with pytest.raises(ValueError, match="covers 24 patches"):
        ours(torch.zeros(20, 96), [[1, 4, 6]])


def test_every_tensor_is_made_on_the_given_device() -> None:
    """The model is built on its device (CUDA in serving): no buffer may stay on the CPU."""
    config, _ = _tiny()
    ours = Qwen2_5_VisionTransformer(config, dtype=torch.float32, device="meta")
    assert {t.device.type for t in [*ours.parameters(), *ours.buffers()]} == {"meta"}
