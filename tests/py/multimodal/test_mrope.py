"""Qwen2-VL's multimodal RoPE positions (``multimodal/mrope.py``) against transformers'
``Qwen2VLModel.get_rope_index`` on prompts with one image, two images of different sizes and
aspect ratios, and text only."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.multimodal.mrope import mrope_positions


def _reference(types: list[int], grids: list[list[int]]) -> tuple[torch.Tensor, int]:
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    config = Qwen2VLConfig(text_config={"hidden_size": 32, "num_hidden_layers": 1,
                                        "num_attention_heads": 4, "num_key_value_heads": 2,
                                        "intermediate_size": 64, "vocab_size": 128},
                           vision_config={"depth": 1, "embed_dim": 16, "num_heads": 2,
                                          "hidden_size": 32})  # fmt: skip
    model = Qwen2VLModel(config)
    ids = torch.ones(1, len(types), dtype=torch.long)
    pos, delta = model.get_rope_index(ids, torch.tensor([types]),
                                      image_grid_thw=torch.tensor(grids) if grids else None)
    return pos[:, 0], int(delta[0, 0])


CASES = {
    "one image": ([0] * 3 + [1] * 6 + [0] * 4, [[1, 4, 6]]),
    "two images": ([0] * 2 + [1] * 6 + [0] * 3 + [1] * 4 + [0] * 5, [[1, 6, 4], [1, 4, 4]]),
    "image first": ([1] * 2 + [0] * 3, [[1, 2, 4]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(case: str) -> None:
    types, grids = CASES[case]
    ours, delta = mrope_positions(types, grids, merge=2)
    want, want_delta = _reference(types, grids)
    assert torch.equal(ours, want) and delta == want_delta


def test_text_only_and_wrong_counts() -> None:
    pos, delta = mrope_positions([0] * 5, [], merge=2)
    assert torch.equal(pos, torch.arange(5).expand(3, 5)) and delta == 0
    with pytest.raises(ValueError, match="has 6 tokens"):
        mrope_positions([0, 1, 1, 0], [[1, 4, 6]], merge=2)


def test_multimodal_rotary_matches_transformers() -> None:
    """``RotaryEmbedding.lookup_multimodal`` + ``apply`` against transformers' Qwen2-VL rotary
    embedding (sections [2, 3, 3] of a 16-dim head) applied the HF way."""
    from sglang.srt.configs.model_config import RopeConfig
    from sglang.srt.layers.rotary_embedding import RotaryEmbedding
    from transformers import Qwen2VLTextConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

    head_dim, sections, theta = 16, [2, 3, 3], 10000.0
    rope = RotaryEmbedding(head_dim, 64, RopeConfig(theta=theta), dtype=torch.float32)
    types = [0] * 3 + [1] * 6 + [0] * 4
    positions, _ = mrope_positions(types, [[1, 4, 6]], merge=2)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(len(types), 4, head_dim, generator=gen)
    cs = rope.lookup_multimodal(positions, sections)
    ours = RotaryEmbedding.apply(q, cs)
    config = Qwen2VLTextConfig(hidden_size=64, num_attention_heads=4, head_dim=head_dim,
                               rope_parameters={"rope_type": "default", "rope_theta": theta,
                                                "mrope_section": sections})  # fmt: skip
    cos, sin = Qwen2VLRotaryEmbedding(config)(q, positions[:, None, :])  # [1, T, D]
    cos, sin = cos[0][:, None, :], sin[0][:, None, :]
    half = head_dim // 2
    rotated = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
    torch.testing.assert_close(ours, q * cos + rotated * sin, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sections"):
        rope.lookup_multimodal(positions, [2, 3])
