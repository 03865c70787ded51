"""xgrammar backend: JSON schema, regex, EBNF and structural tags.

``structural_tag`` takes xgrammar's format (``{"type": "structural_tag", "format": {...}}``) or
SGLang's legacy one (``{"structures": [{"begin", "schema", "end"}], "triggers": [...]}``).
JSON schemas compile without free whitespace (compact JSON), as SGLang does by default: small
models otherwise tend to emit whitespace forever.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from sglang.srt.constrained.base_grammar_backend import (
    GrammarBackend,
    GrammarError,
    GrammarKey,
    GrammarMatcher,
)


class XGrammarMatcher(GrammarMatcher):
    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def accept_token(self, token: int) -> bool:
        return bool(self._m.accept_token(int(token)))

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids)
        import xgrammar

        self._xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_token_ids) or None)
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=2, cache_enabled=False)

    def compile(self, key: GrammarKey) -> Any:
        try:
            if key.kind == "json_schema":
                return self._compiler.compile_json_schema(key.text, any_whitespace=False)
            if key.kind == "regex":
                return self._compiler.compile_regex(key.text)
            if key.kind == "ebnf":
                return self._compiler.compile_grammar(key.text)
            return self._compile_structural_tag(key.text)
        except GrammarError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError / its own types
            raise GrammarError(f"Invalid {key.kind}: {_message(exc)}") from exc

    def _compile_structural_tag(self, text: str) -> Any:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"Invalid structural_tag: not JSON: {exc}") from exc
        if isinstance(spec, dict) and "structures" in spec:  # SGLang's legacy format
            tags = [self._xgr.StructuralTagItem(begin=s["begin"],
                                                schema=json.dumps(s["schema"]), end=s["end"])
                    for s in spec["structures"]]
            tag = self._xgr.StructuralTag.from_legacy_structural_tag(tags, spec["triggers"])
            return self._compiler.compile_structural_tag(tag)
        return self._compiler.compile_structural_tag(text)

    def matcher(self, compiled: Any) -> GrammarMatcher:
        return XGrammarMatcher(self._xgr.GrammarMatcher(compiled))


_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


def _message(exc: Exception) -> str:
    """The compiler's message without xgrammar's log prefix ("[time] file.cc:line: ")."""
    text = str(exc).strip() or type(exc).__name__
    text = _LOG_PREFIX.sub("", text.splitlines()[0] if len(text) > 2000 else text)
    return text
