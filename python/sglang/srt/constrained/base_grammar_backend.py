"""Constrained decoding: what a grammar backend provides, and the compile cache the engine uses.

A request's grammar (``json_schema``, ``regex``, ``ebnf`` or ``structural_tag`` in its sampling
params) becomes a ``GrammarKey``. The engine asks ``GrammarCache.submit(key)`` for the compiled
grammar: compilation runs on a worker thread (the request waits outside the scheduler, the other
requests keep decoding), results are cached by key, and a compile that fails or takes longer than
the timeout ends the request with a 400. Each admitted request then gets its own ``GrammarMatcher``
(``backend.matcher(compiled)``): per decode step the engine asks it to fill its row of an int32
token bitmask (xgrammar's layout: bit ``t % 32`` of word ``t // 32`` set = token ``t`` allowed),
the core's mask kernel applies the bitmask to the logits, and the sampled token is fed back with
``accept_token``. Backends: ``xgrammar_backend`` (all four kinds), ``outlines_backend`` (JSON
schema and regex).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

GRAMMAR_KINDS = ("json_schema", "regex", "ebnf", "structural_tag")
BACKEND_KINDS = {"xgrammar": GRAMMAR_KINDS, "outlines": ("json_schema", "regex")}


@dataclasses.dataclass(frozen=True)
class GrammarKey:
    kind: str  # one of GRAMMAR_KINDS
    text: str


def grammar_key(sampling: Any) -> GrammarKey | None:
    """The grammar of a request's (normalised) SamplingParams, or None."""
    for kind in GRAMMAR_KINDS:
        text = getattr(sampling, kind, None)
        if text:
            return GrammarKey(kind, text)
    return None


class GrammarError(ValueError):
    """The grammar is invalid (or unsupported by the backend): HTTP 400 with this message."""


def check_grammar_supported(backend: str, key: GrammarKey) -> None:
    """GrammarError unless ``--grammar-backend`` ``backend`` handles this kind of grammar."""
    if backend == "none":
        raise GrammarError(f"{key.kind} is not available: the server runs with "
                           "--grammar-backend none (constrained decoding is off).")
    kinds = BACKEND_KINDS.get(backend, ())
    if key.kind not in kinds:
        raise GrammarError(
            f"The {backend} grammar backend does not support {key.kind}; supported: "
            f"{', '.join(kinds)}. Start the server with --grammar-backend xgrammar.")


class GrammarMatcher(ABC):
    """The state of one request's grammar."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Writes the tokens allowed next into ``bitmask[row]`` (int32, CPU)."""

    @abstractmethod
    def accept_token(self, token: int) -> bool:
        """Advances over a sampled token; False if the grammar does not allow it."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once the grammar is complete and its stop token was accepted."""


class GrammarBackend(ABC):
    """Compiles grammars for one tokenizer / vocabulary."""

    name: str

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)

    @abstractmethod
    def compile(self, key: GrammarKey) -> Any:
        """The compiled grammar; raises GrammarError with the compiler's message."""

    @abstractmethod
    def matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the start of ``compiled``."""

    @property
    def words_per_row(self) -> int:
        return (self.vocab_size + 31) // 32


def create_grammar_backend(name: str, tokenizer: Any, vocab_size: int,
                           eos_token_ids: list[int]) -> GrammarBackend | None:
    """The backend of ``--grammar-backend`` (None for ``none``)."""
    if name == "none":
        return None
    if name == "xgrammar":
        from sglang.srt.constrained.xgrammar_backend import XGrammarBackend

        return XGrammarBackend(tokenizer, vocab_size, eos_token_ids)
    if name == "outlines":
        from sglang.srt.constrained.outlines_backend import OutlinesBackend

        return OutlinesBackend(tokenizer, vocab_size, eos_token_ids)
    raise ValueError(f"Unknown grammar backend {name!r}; expected xgrammar, outlines or none")


@dataclasses.dataclass
class _Entry:
    future: concurrent.futures.Future
    submitted: float


class GrammarCache:
    """Compiles grammars on a worker thread, once per key (LRU-bounded cache of results)."""

    def __init__(self, backend_factory: Callable[[], GrammarBackend], timeout_s: float = 60.0,
                 max_entries: int = 256, workers: int = 1) -> None:
        self._factory = backend_factory
        self._backend: GrammarBackend | None = None
        self._backend_lock = threading.Lock()
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "grammar-compile")
        self._entries: dict[GrammarKey, _Entry] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def submit(self, key: GrammarKey) -> concurrent.futures.Future:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None and not _failed(entry.future):
                self._entries[key] = entry  # most recently used last
                self.hits += 1
                return entry.future
            self.misses += 1
            future = self._pool.submit(self._compile, key)
            self._entries[key] = _Entry(future, time.monotonic())
            while len(self._entries) > self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            return future

    @property
    def backend(self) -> GrammarBackend:
        """The backend, created on first use (on the compile thread: building a tokenizer's
        vocabulary tables takes a while)."""
        with self._backend_lock:
            if self._backend is None:
                self._backend = self._factory()
            return self._backend

    def _compile(self, key: GrammarKey) -> Any:
        backend = self.backend
        check_grammar_supported(backend.name, key)
        return backend.compile(key)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _failed(future: concurrent.futures.Future) -> bool:
    return future.done() and future.exception() is not None
