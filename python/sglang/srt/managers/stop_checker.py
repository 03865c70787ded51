"""Text-level stop conditions (stop strings and stop regexes), checked in the engine process.

Token-level stops (EOS, stop_token_ids, lengths) are the C++ core's. Stop strings and regexes need
text: the checker keeps the request's output text incrementally (a few tokens decoded per step)
and, after each new token, looks for a stop string that ends in the new text, then for a regex
match that can end there: one starting at most ``STOP_REGEX_WINDOW_CHARS`` characters (or the
pattern's maximum width, when smaller) before it. Regexes run on the ``regex`` engine with a time budget per check, so a
pattern that backtracks catastrophically ends its own request (``StopCheckError``, HTTP 400)
instead of stalling the engine: the cost per token is bounded whatever the pattern and the output
length. The detokenizer (HTTP side) then trims the text at the matched string.
"""

from __future__ import annotations

import re
import time
from typing import Any

import regex

from sglang.srt.managers.detokenizer import IncrementalDetokenizer

STOP_REGEX_WINDOW_CHARS = 1024  # a regex match must start in the output's last N characters
STOP_REGEX_BUDGET_S = 0.05  # time for all of a request's stop regexes, per check


class StopCheckError(ValueError):
    """A request's stop regex could not be checked in its time budget."""


class StopChecker:
    def __init__(self, tokenizer: Any, stop_strings: list[str], stop_regex: list[str]) -> None:
        self.stop_strings = stop_strings
        self.patterns = [(p, regex.compile(p), _window(p)) for p in stop_regex]
        self.active = bool(stop_strings or self.patterns) and tokenizer is not None
        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=False) \
            if self.active else None
        self.fed = 0  # output tokens given to the detokenizer
        self.checked = 0  # text length already searched for stop strings

    def check(self, output_ids: list[int]) -> str | None:
        """The matched stop string (or regex match) once the output contains one, else None.
        Raises StopCheckError when the stop regexes overrun their time budget."""
        if self.detok is None:
            return None
        text = self.detok.add(output_ids[self.fed:])
        self.fed = len(output_ids)
        prev = self.checked
        if len(text) == prev:
            return None  # no new characters yet (an incomplete UTF-8 sequence)
        self.checked = len(text)
        # A match not seen before ends in the new text, so it starts at most its width earlier.
        for s in self.stop_strings:
            if text.find(s, max(0, prev - len(s) + 1)) >= 0:
                return s
        deadline = time.perf_counter() + STOP_REGEX_BUDGET_S
        for source, pattern, window in self.patterns:
            left = deadline - time.perf_counter()
            try:
                if left <= 0:
                    raise TimeoutError
                m = pattern.search(text, max(0, prev + 1 - window), timeout=left)
            except TimeoutError:
                raise StopCheckError(
                    f"stop_regex {source!r} took more than {STOP_REGEX_BUDGET_S * 1000:g} ms to "
                    "match the output (catastrophic backtracking?); use a simpler pattern."
                ) from None
            if m is not None:
                return m.group(0)
        return None


def _window(pattern: str) -> int:
    """Characters a match can span: the pattern's maximum width, capped at the window."""
    try:
        width = re._parser.parse(pattern).getwidth()[1]  # type: ignore[attr-defined]
    except (re.error, AttributeError, OverflowError, RecursionError):
        return STOP_REGEX_WINDOW_CHARS
    return int(min(width, STOP_REGEX_WINDOW_CHARS))


def compile_stop_regex(patterns: list[str]) -> None:
    """Raises ValueError (HTTP 400) for a pattern the regex engine cannot compile."""
    for p in patterns:
        try:
            regex.compile(p)
        except (regex.error, RecursionError, OverflowError) as exc:
            raise ValueError(f"Invalid stop_regex {p!r}: {exc}") from None
