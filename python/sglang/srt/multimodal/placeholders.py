"""Image placeholders in a prompt's token ids (issue 14 building block, not served yet).

A vision-language prompt holds one image token per image (Qwen2-VL's ``<|image_pad|>``, LLaVA's
``<image>``); the model needs one position per image embedding there. ``expand_image_tokens``
repeats each image token as many times as its image has embeddings and returns where each image's
span lies. For the radix cache the span's ids are then replaced by ``pad_ids``: a pseudo-random
sequence derived from the image's content hash (``image_loader.image_hash``), inside the
vocabulary so the scheduler's id checks hold. The same image gives the same ids, so the same image
+ prompt hits the cache; a different image gives different ids from its first position on, so it
never does. The model never embeds these ids: it puts the image's embeddings at those positions.
"""

from __future__ import annotations

from dataclasses import dataclass

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio increment (splitmix64)
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class ImageSpan:
    """Image ``index`` occupies token positions [start, start + length)."""

    index: int
    start: int
    length: int


def expand_image_tokens(input_ids: list[int], image_token_id: int, counts: list[int]
                        ) -> tuple[list[int], list[ImageSpan]]:  # fmt: skip
    """Each occurrence of ``image_token_id`` (in order) repeated ``counts[i]`` times; ValueError
    when the prompt holds a different number of image tokens than there are images."""
    found = sum(1 for t in input_ids if t == image_token_id)
    if found != len(counts):
        raise ValueError(f"The prompt has {found} image placeholder(s) for {len(counts)} "
                         "image(s) in image_data.")
    out: list[int] = []
    spans: list[ImageSpan] = []
    for t in input_ids:
        if t == image_token_id:
            n = counts[len(spans)]
            spans.append(ImageSpan(len(spans), len(out), n))
            out.extend([image_token_id] * n)
        else:
            out.append(t)
    return out, spans


def pad_ids(image_hash: int, length: int, vocab_size: int) -> list[int]:
    """``length`` ids in [0, vocab_size) drawn from ``image_hash`` (splitmix64)."""
    state, out = image_hash & _MASK, []
    for _ in range(length):
        state = (state + _MIX) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        out.append((z ^ (z >> 31)) % vocab_size)
    return out


def with_pad_ids(input_ids: list[int], spans: list[ImageSpan], hashes: list[int],
                 vocab_size: int) -> list[int]:  # fmt: skip
    """The expanded ids with every image span replaced by its image's ``pad_ids``."""
    ids = list(input_ids)
    for span in spans:
        ids[span.start : span.start + span.length] = pad_ids(hashes[span.index], span.length,
                                                             vocab_size)  # fmt: skip
    return ids
