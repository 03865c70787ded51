"""Image placeholders (``multimodal/placeholders.py``): expansion of each image token to its
image's embedding count, and the hash-derived pad ids that make the radix cache match the same
image and never a different one."""

from __future__ import annotations

import pytest
from sglang.srt.multimodal.placeholders import (
    ImageSpan,
    expand_image_tokens,
    pad_ids,
    with_pad_ids,
)

IMG = 99


def test_expansion_and_spans() -> None:
    ids, spans = expand_image_tokens([1, 2, IMG, 3, IMG, 4], IMG, [3, 2])
    assert ids == [1, 2, IMG, IMG, IMG, 3, IMG, IMG, 4]
    assert spans == [ImageSpan(0, 2, 3), ImageSpan(1, 6, 2)]
    with pytest.raises(ValueError, match="1 image placeholder"):
        expand_image_tokens([1, IMG], IMG, [3, 2])
    assert expand_image_tokens([1, 2], IMG, []) == ([1, 2], [])


def test_pad_ids_are_stable_distinct_and_in_vocab() -> None:
    a, b = pad_ids(12345, 64, 500), pad_ids(12346, 64, 500)
    assert a == pad_ids(12345, 64, 500) and all(0 <= t < 500 for t in a + b)
    assert a[0] != b[0] and sum(x == y for x, y in zip(a, b)) < 8  # differ from the first id
    assert len(set(a)) > 40  # not a constant run


def test_same_image_shares_the_prefix_different_image_does_not() -> None:
    ids, spans = expand_image_tokens([1, 2, IMG, 3], IMG, [4])
    first = with_pad_ids(ids, spans, [7], 1000)
    again = with_pad_ids(ids, spans, [7], 1000)
    other = with_pad_ids(ids, spans, [8], 1000)
    assert first == again
    common = next(i for i, (x, y) in enumerate(zip(first, other)) if x != y)
    assert common == 2  # the text before the image is shared, nothing after it
