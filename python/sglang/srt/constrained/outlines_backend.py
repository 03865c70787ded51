"""outlines backend (``outlines_core``): JSON schema (through its regex) and regex.

The vocabulary handed to outlines is each token's exact bytes: byte-level BPE tokens are mapped
back through GPT-2's byte-to-unicode table, SentencePiece pieces get their spaces and ``<0xNN>``
bytes back. Special tokens are left out (EOS is outlines' stop token). A guide in a final state
allows EOS; accepting EOS there terminates it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import torch

from sglang.srt.constrained.base_grammar_backend import (
    GrammarBackend,
    GrammarError,
    GrammarKey,
    GrammarMatcher,
)

# Whitespace allowed between JSON tokens: none (compact JSON), as the xgrammar backend does.
JSON_WHITESPACE = r"[ ]?"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in of each byte -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None and "ByteLevel" in type(decoder).__name__ + repr(decoder):
        return True
    vocab = tokenizer.get_vocab()
    return "Ġthe" in vocab or "Ġ" in vocab


def token_bytes(tokenizer: Any, vocab_size: int,
                exclude: Iterable[int] = ()) -> dict[bytes, list[int]]:
    """bytes -> token ids for every ordinary token below ``vocab_size``: not a special token
    and not in ``exclude`` (the EOS ids, which some tokenizers do not list as special)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(exclude)
    byte_level = _is_byte_level(tokenizer)
    table = _unicode_to_byte()
    out: dict[bytes, list[int]] = {}
    for text, tid in tokenizer.get_vocab().items():
        if tid in special or tid >= vocab_size:
            continue
        if byte_level:
            try:
                data = bytes(table[c] for c in text)
            except KeyError:  # an added token that is not byte-level encoded
                data = text.encode("utf-8")
        else:
            m = _BYTE_PIECE.fullmatch(text)
            data = bytes([int(m.group(1), 16)]) if m else text.replace("\u2581", " ").encode()
        if data:
            out.setdefault(data, []).append(tid)
    return out


class OutlinesMatcher(GrammarMatcher):
    def __init__(self, guide: Any, eos_token_ids: list[int]) -> None:
        self._guide = guide
        self._eos = set(eos_token_ids)
        self._terminated = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        target = bitmask[row]
        if self._terminated:
            target.zero_()
            return
        self._guide.write_mask_into(target.data_ptr(), target.numel(), 4)
        if self._guide.is_finished():  # a complete match may also end with any stop token
            for t in self._eos:
                target[t // 32] |= _bit(t % 32)

    def accept_token(self, token: int) -> bool:
        if self._terminated:
            return False
        if token in self._eos and self._guide.is_finished():
            self._terminated = True
            return True
        try:
            self._guide.advance(int(token))
        except ValueError:
            return False
        return True

    def is_terminated(self) -> bool:
        return self._terminated


def _bit(k: int) -> int:
    """Bit k of an int32 word as a Python int in int32 range."""
    return (1 << k) - (1 << 32) if k == 31 else 1 << k


class OutlinesBackend(GrammarBackend):
    name = "outlines"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids)
        import outlines_core

        self._oc = outlines_core
        if not eos_token_ids:
            raise ValueError("the outlines grammar backend needs the model's EOS token id")
        self._vocab = outlines_core.Vocabulary(int(eos_token_ids[0]),
                                               token_bytes(tokenizer, vocab_size,
                                                           exclude=eos_token_ids))

    def compile(self, key: GrammarKey) -> Any:
        if key.kind == "json_schema":
            try:
                regex = self._oc.json_schema.build_regex_from_schema(key.text, JSON_WHITESPACE)
            except Exception as exc:
                raise GrammarError(f"Invalid json_schema: {exc}") from exc
        else:
            regex = key.text
        try:
            return self._oc.Index(regex, self._vocab)
        except Exception as exc:
            raise GrammarError(f"Invalid {key.kind}: {exc}") from exc

    def matcher(self, compiled: Any) -> GrammarMatcher:
        return OutlinesMatcher(self._oc.Guide(compiled), self.eos_token_ids)
