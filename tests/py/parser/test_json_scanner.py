"""JsonScanner: valid JSON ends exactly where json.loads says, in any chunking; invalid JSON is
caught; the top-level members' spans are the source text of their values."""

from __future__ import annotations

import json
import random

import pytest
from sglang.srt.parser.json_scanner import JsonScanner


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 6 if depth < 3 else 3)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.choice([0, -3, 12.5, 1e-7, 2**40])
    if kind in (2, 3):
        return "".join(rng.choice('ab"\\/\n\té{}[],: ') for _ in range(rng.randint(0, 6)))
    if kind == 4:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def scan(text: str, pieces: int, seed: int) -> tuple[JsonScanner, int]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(pieces, len(text) - 1))) + [len(text)]
    scanner, pos = JsonScanner(), 0
    for cut in cuts:
        pos = scanner.feed(text[:cut], pos)
    return scanner, pos


@pytest.mark.parametrize("seed", range(40))
def test_valid_values(seed: int) -> None:
    rng = random.Random(seed)
    value = {"name": "f", "arguments": random_value(rng), "x": random_value(rng)}
    indent = rng.choice([None, 1])
    text = json.dumps(value, indent=indent, ensure_ascii=rng.random() < 0.5)
    scanner, pos = scan(text + " trailing", pieces=rng.randint(1, 30), seed=seed)
    assert scanner.done and not scanner.error and pos == len(text)
    for key, span in scanner.members.items():
        assert json.loads(text[span.start:span.end]) == value[key]


@pytest.mark.parametrize("text", ['{"a":}', '{"a":1,}', '{"a" 1}', '{"a": 01}', '{"a": tru}',
                                  '{"a": "\\x"}', '{"a": "\\u12g4"}', "{'a': 1}", '{"a": [1 2]}',
                                  '{"a": "line\nbreak"}', '{"a": 1]', "[1, 2}"])
def test_invalid_values(text: str) -> None:
    scanner = JsonScanner()
    scanner.feed(text, 0)
    assert scanner.error and not scanner.done


def test_unfinished_value_is_neither_done_nor_error() -> None:
    scanner, text = JsonScanner(), '{"name": "f", "arguments": {"a": [1, "x'
    assert scanner.feed(text, 0) == len(text)
    assert not scanner.done and not scanner.error
    assert scanner.in_member("arguments") and not scanner.in_member("name")
