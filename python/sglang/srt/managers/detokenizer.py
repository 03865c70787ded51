"""Incremental detokenization of one request's output (HTTP process).

Token ids arrive a few at a time; the text grows only by whole characters: a piece whose decoding
ends in U+FFFD (an incomplete UTF-8 sequence of a byte-level tokenizer) waits for the next token.
Streaming chunks and the final response come from the same object, so the streamed text equals
the non-streamed text byte for byte. At the end, ``finish`` applies the contract's trimming: text
cut at the first occurrence of a matched stop string (after it with ``no_stop_trim``); a matched
stop *token* is never fed here unless ``no_stop_trim``.
"""

from __future__ import annotations

from typing import Any

# Tokens kept before the read offset as context, so that merges across the boundary (leading
# spaces of sentencepiece tokenizers, multi-byte characters) decode the same as a full decode.
CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.kwargs: dict[str, Any] = {"skip_special_tokens": skip_special_tokens}
        if not spaces_between_special_tokens:
            self.kwargs["spaces_between_special_tokens"] = False
        self.ids: list[int] = []
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids, **self.kwargs)
        except TypeError:  # tokenizers without spaces_between_special_tokens
            return self.tokenizer.decode(ids, skip_special_tokens=self.kwargs["skip_special_tokens"])

    def add(self, new_ids: list[int], final: bool = False) -> str:
        """Feeds tokens; returns the whole text so far."""
        self.ids.extend(new_ids)
        if self.read_offset == len(self.ids):
            return self.text
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            if full.startswith(prefix):
                self.text += full[len(prefix):]
            else:  # the context re-merged differently: re-decode everything (rare)
                self.text = self._decode(self.ids)
            self.prefix_offset = max(0, len(self.ids) - CONTEXT_TOKENS)
            self.read_offset = len(self.ids)
        elif final:
            self.read_offset = len(self.ids)
        return self.text

    def finish(self, stop_string: str | None, no_stop_trim: bool) -> str:
        """Flushes held-back bytes and trims at the matched stop string; returns the final text."""
        self.add([], final=True)
        if self.read_offset < len(self.ids):
            self.add([], final=True)
        if stop_string:
            idx = self.text.find(stop_string)
            if idx >= 0:
                self.text = self.text[: idx + len(stop_string)] if no_stop_trim else self.text[:idx]
        return self.text
