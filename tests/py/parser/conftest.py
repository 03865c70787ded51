"""Helpers of the parser tests: feeding a parser in chunks and joining what it returns."""

from __future__ import annotations

import random

import pytest


def chunks(text: str, sizes: str | int, seed: int = 0) -> list[str]:
    """``text`` cut in pieces: ``sizes`` = n (every piece n chars) or "random" (1 to 7 chars)."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = sizes if isinstance(sizes, int) else rng.randint(1, 7)
        out.append(text[i:i + n])
        i += n
    return out


@pytest.fixture(params=["1", "random0", "random1", "random2", "whole"])
def chunking(request: pytest.FixtureRequest):
    """A way of cutting the output into stream deltas."""
    mode = request.param

    def cut(text: str) -> list[str]:
        if mode == "whole":
            return [text]
        if mode == "1":
            return chunks(text, 1)
        return chunks(text, "random", seed=int(mode[-1]))

    return cut
