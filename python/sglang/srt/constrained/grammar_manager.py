"""The engine's side of constrained decoding: requests waiting for their grammar, and the per-step
token bitmasks.

``submit`` parks a request while its grammar compiles (``GrammarCache``: worker thread, cache,
timeout); ``poll`` hands back the requests whose grammar is ready (with a fresh matcher) and those
that failed or timed out (with the message for their 400). ``start_masks`` fills the bitmask rows
of the grammar requests sampled in a step on a worker thread, so it overlaps the forward pass;
``finish_masks`` waits for it and gives the (bitmask, row index) pair the sampler applies.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sglang.srt.constrained.base_grammar_backend import (
    GrammarBackend,
    GrammarCache,
    GrammarKey,
    GrammarMatcher,
)

POLL_S = 0.005  # how long a poll with nothing else to do waits for a compile to finish


@dataclasses.dataclass
class PendingGrammar:
    req: Any  # the engine's request object (it has a ``rid``)
    future: concurrent.futures.Future
    since: float


class GrammarManager:
    def __init__(self, backend_factory: Callable[[], GrammarBackend], timeout_s: float) -> None:
        self.cache = GrammarCache(backend_factory, timeout_s=timeout_s)
        self.waiting: list[PendingGrammar] = []
        self._mask_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.mask_fill_seconds = 0.0  # time spent filling bitmask rows (worker thread)
        self.mask_rows = 0

    # ---- requests waiting for their grammar ------------------------------------------------------
    def has_rid(self, rid: str) -> bool:
        return any(p.req.rid == rid for p in self.waiting)

    def submit(self, req: Any, key: GrammarKey) -> None:
        self.waiting.append(PendingGrammar(req, self.cache.submit(key), time.monotonic()))

    def poll(self, wait: bool) -> tuple[list[tuple[Any, GrammarMatcher]], list[tuple[Any, str]]]:
        """(ready requests with their matcher, failed requests with their error message).
        ``wait``: nothing else to do, so block up to POLL_S for a compile to finish."""
        if not self.waiting:
            return [], []
        if wait and not any(p.future.done() for p in self.waiting):
            concurrent.futures.wait([p.future for p in self.waiting], timeout=POLL_S,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
        ready: list[tuple[Any, GrammarMatcher]] = []
        failed: list[tuple[Any, str]] = []
        still: list[PendingGrammar] = []
        now = time.monotonic()
        for p in self.waiting:
            if p.future.done():
                exc = p.future.exception()
                if exc is None:
                    ready.append((p.req, self.cache.backend.matcher(p.future.result())))
                elif isinstance(exc, ValueError):
                    failed.append((p.req, str(exc)))
                else:
                    failed.append((p.req, f"Grammar compilation failed: "
                                          f"{type(exc).__name__}: {exc}"))
            elif now - p.since > self.cache.timeout_s:
                failed.append((p.req, f"Grammar compilation timed out after "
                                      f"{self.cache.timeout_s:g} s."))
            else:
                still.append(p)
        self.waiting = still
        return ready, failed

    def abort(self, rid: str, abort_all: bool) -> list[Any]:
        """Removes and returns the waiting requests with this rid (or all of them)."""
        gone = [p.req for p in self.waiting if abort_all or p.req.rid == rid]
        self.waiting = [p for p in self.waiting if not (abort_all or p.req.rid == rid)]
        return gone

    # ---- per-step bitmasks ----------------------------------------------------------------------
    def start_masks(self, matchers: Sequence[GrammarMatcher | None]) -> Any:
        """Starts filling the bitmask rows of the non-None matchers (one per sampled row)."""
        rows = [k for k, m in enumerate(matchers) if m is not None]
        if not rows:
            return None
        if self._mask_pool is None:
            self._mask_pool = concurrent.futures.ThreadPoolExecutor(1, "grammar-mask")
        bitmask = torch.empty((len(rows), self.cache.backend.words_per_row), dtype=torch.int32)
        active = [matchers[k] for k in rows]

        def fill() -> float:
            t0 = time.perf_counter()
            for j, m in enumerate(active):
                m.fill_bitmask(bitmask, j)
            return time.perf_counter() - t0

        index = np.full(len(matchers), -1, dtype=np.int32)
        index[rows] = np.arange(len(rows), dtype=np.int32)
        return self._mask_pool.submit(fill), bitmask, index

    def finish_masks(self, started: Any, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(int32 bitmask [G, words], int32 [rows] -> bitmask row or -1) on ``device``."""
        if started is None:
            return None
        job, bitmask, index = started
        self.mask_fill_seconds += job.result()
        self.mask_rows += len(bitmask)
        index_t = torch.from_numpy(index)
        if device.type == "cuda":  # pinned: the copies need not wait for the stream
            bitmask, index_t = bitmask.pin_memory(), index_t.pin_memory()
        return bitmask.to(device, non_blocking=True), index_t.to(device, non_blocking=True)

    @property
    def mask_us_per_token(self) -> float:
        return 1e6 * self.mask_fill_seconds / max(self.mask_rows, 1)
