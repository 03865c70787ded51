"""ReasoningParser: qwen3 and deepseek-r1 outputs, whole and streamed in any chunking."""

from __future__ import annotations

import pytest
from sglang.srt.parser.reasoning_parser import ReasoningParser


def stream(parser: ReasoningParser, pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    """Joined (reasoning, content) of a stream, and the deltas as returned."""
    deltas = [parser.parse_stream_chunk(p) for p in pieces]
    deltas.append(parser.flush())
    return "".join(r for r, _ in deltas), "".join(c for _, c in deltas), deltas


CASES = [
    # model type, output, (reasoning, content)
    ("qwen3", "<think>\nLet me think.\n</think>\n\nThe answer is 42.",
     ("Let me think.", "The answer is 42.")),
    ("qwen3", "The answer is 42.\n", (None, "The answer is 42.\n")),
    ("qwen3", "\n<think>a</think>b", ("a", "b")),
    ("qwen3", "Hmm <think>r\n</think> done", ("r", "Hmm done")),
    ("qwen3", "<think>\ncut short by max_tokens\n", ("cut short by max_tokens", "")),
    ("qwen3", "<think></think>x", ("", "x")),
    ("qwen3", "a </think> b", (None, "a </think> b")),
    ("qwen3", "ends with a partial tag <thi", (None, "ends with a partial tag <thi")),
    ("qwen3", "<think>x < y and </thin is not a tag</think>ok", ("x < y and </thin is not a tag",
                                                            "ok")),
    ("deepseek-r1", "reason here\n</think>\n\nanswer", ("reason here", "answer")),
    ("deepseek-r1", "<think>\nreason</think>answer", ("reason", "answer")),
    ("deepseek-r1", "no end tag", ("no end tag", "")),
    ("deepseek-r1", "</think>only content", ("", "only content")),
    ("deepseek-r1", "", (None, "")),
    ("deepseek-r1", "r </thi", ("r </thi", "")),
]


@pytest.mark.parametrize("model_type,text,expected", CASES)
def test_non_stream(model_type: str, text: str, expected: tuple[str | None, str]) -> None:
    assert ReasoningParser(model_type).parse_non_stream(text) == expected


@pytest.mark.parametrize("stream_reasoning", [True, False])
@pytest.mark.parametrize("model_type,text,expected", CASES)
def test_stream_equals_non_stream(model_type: str, text: str, expected: tuple[str | None, str],
                                  stream_reasoning: bool, chunking) -> None:
    reasoning, content, _ = stream(ReasoningParser(model_type, stream_reasoning),
                                   chunking(text))
    assert (reasoning, content) == (expected[0] or "", expected[1])


def test_stream_sends_reasoning_as_it_grows() -> None:
    parser = ReasoningParser("qwen3")
    assert parser.parse_stream_chunk("<thi") == ("", "")
    assert parser.parse_stream_chunk("nk>\nStep one") == ("Step one", "")
    assert parser.parse_stream_chunk(", two\n</thi") == (", two", "")
    assert parser.parse_stream_chunk("nk>\n\nAnswer") == ("", "Answer")
    assert parser.parse_stream_chunk(" more") == ("", " more")
    assert parser.flush() == ("", "")


def test_content_is_not_held_without_a_tag() -> None:
    parser = ReasoningParser("qwen3")
    assert parser.parse_stream_chunk("Hello") == ("", "Hello")
    assert parser.parse_stream_chunk(" world <") == ("", " world ")
    assert parser.parse_stream_chunk("b>") == ("", "<b>")


def test_stream_reasoning_false_sends_reasoning_in_one_piece() -> None:
    parser = ReasoningParser("qwen3", stream_reasoning=False)
    _, _, deltas = stream(parser, ["<think>", "a", "b", "c", "</think>", "done"])
    assert [r for r, _ in deltas if r] == ["abc"]
    assert "".join(c for _, c in deltas) == "done"


def test_stream_reasoning_false_unclosed_reasoning_comes_at_flush() -> None:
    parser = ReasoningParser("deepseek-r1", stream_reasoning=False)
    assert parser.parse_stream_chunk("thinking") == ("", "")
    assert parser.parse_stream_chunk(" more") == ("", "")
    assert parser.flush() == ("thinking more", "")


def test_force_reasoning_overrides_the_model_default() -> None:
    assert ReasoningParser("qwen3", force_reasoning=True).parse_non_stream("r</think>c") == \
        ("r", "c")
    assert ReasoningParser("qwen3", force_reasoning=True).parse_non_stream("<think>r</think>c") \
        == ("r", "c")
    assert ReasoningParser("deepseek-r1", force_reasoning=False).parse_non_stream("just text") \
        == (None, "just text")


def test_only_the_first_block_is_reasoning() -> None:
    assert ReasoningParser("qwen3").parse_non_stream("<think>a</think>b<think>c</think>") == \
        ("a", "b<think>c</think>")


def test_unknown_model_type() -> None:
    with pytest.raises(ValueError, match="qwen3"):
        ReasoningParser("nope")
