"""Text-level stop conditions (stop strings and stop regexes), checked in the engine process.

Token-level stops (EOS, stop_token_ids, lengths) are the C++ core's. Stop strings need decoded
text: after each new token the engine decodes a short tail of the output and looks for a stop
string that ends inside the newest token's text, or a regex match, and finishes the request
there. The detokenizer (HTTP side) then trims the text at the matched string.
"""

from __future__ import annotations

import re
from typing import Any


class StopChecker:
    def __init__(self, tokenizer: Any, stop_strings: list[str], stop_regex: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.patterns = [re.compile(p) for p in stop_regex]
        longest = max((len(s) for s in stop_strings), default=0)
        # Tokens to decode: a stop string of L characters spans at most L + 1 tokens (and a few
        # more for byte-level pieces that only become characters together).
        self.tail_tokens = longest + 4
        self.active = bool(stop_strings or self.patterns) and tokenizer is not None

    def check(self, output_ids: list[int]) -> str | None:
        """The matched stop string (or regex match) once the output contains one, else None."""
        if not self.active:
            return None
        if self.stop_strings:
            tail = self.tokenizer.decode(output_ids[-self.tail_tokens:], skip_special_tokens=False)
            for s in self.stop_strings:
                if s in tail:
                    return s
        if self.patterns:
            # Regexes may span the whole output: search it (outputs are short next to a forward).
            text = self.tokenizer.decode(output_ids, skip_special_tokens=False)
            for p in self.patterns:
                m = p.search(text)
                if m is not None:
                    return m.group(0)
        return None


def compile_stop_regex(patterns: list[str]) -> None:
    """Raises ValueError (HTTP 400) for a pattern Python's re cannot compile."""
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"Invalid stop_regex {p!r}: {exc}") from exc
