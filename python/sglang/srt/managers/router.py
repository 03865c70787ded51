"""Data-parallel routing policies: which engine replica serves a new prompt (``--dp-size > 1``).

The ``EngineGroup`` (``engine_group.py``) asks its policy for a replica once per distinct prompt
of a ``send`` (``choose``), with the prompt and every replica's load: the requests routed to it
and not finished yet, which the group counts. Policies (``--load-balance-method``):

- ``round_robin``: replicas in turn (SGLang's default).
- ``shortest_queue``: the fewest requests in flight, ties to the lowest index.
- ``cache_aware`` (sgl-router's policy): each replica has an approximate copy of its prefix cache
  (``PrefixIndex``: the prompts sent to it, by pages of ``PAGE_TOKENS``, LRU-capped); the prompt
  goes where its longest prefix is cached when that covers at least ``cache_threshold`` of it,
  else to the shortest queue; while the load is too uneven, always to the shortest queue.

Policies only decide; they never see responses. Mutates only the policy's own state; runs on the
HTTP process's event loop (no locking).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

PAGE_TOKENS = 16  # granularity of the cache-aware router's prefix index
MAX_INDEXED_TOKENS = 1 << 20  # per replica


@dataclasses.dataclass(frozen=True)
class Prompt:
    """What a policy sees of a request: its token ids and its radix-cache namespace (the
    input_embeds content and the LoRA adapter: prompts of different namespaces share nothing)."""

    input_ids: Sequence[int]
    namespace: str = ""


class Policy(Protocol):
    def choose(self, prompt: Prompt, loads: Sequence[int]) -> int:
        """The replica for ``prompt``; ``loads[i]``: requests in flight on replica i."""
        ...

    def forget_cached(self) -> None:
        """The replicas' prefix caches were flushed."""
        ...


def shortest_queue(loads: Sequence[int]) -> int:
    """The replica with the fewest requests in flight (ties: the lowest index)."""
    return min(range(len(loads)), key=loads.__getitem__)


class RoundRobin:
    def __init__(self, num_replicas: int) -> None:
        self._next = itertools.cycle(range(num_replicas))

    def choose(self, prompt: Prompt, loads: Sequence[int]) -> int:
        return next(self._next)

    def forget_cached(self) -> None:
        pass


class ShortestQueue:
    def __init__(self, num_replicas: int) -> None:
        pass

    def choose(self, prompt: Prompt, loads: Sequence[int]) -> int:
        return shortest_queue(loads)

    def forget_cached(self) -> None:
        pass


def page_hashes(prompt: Prompt, page_tokens: int = PAGE_TOKENS) -> list[int]:
    """One hash per full page of the prompt, each chained to the previous one (and the first to
    the namespace), so a page's hash names its whole prefix: equal hashes, equal prefixes (up to
    64-bit collisions, harmless here: a wrong guess only costs a cache miss)."""
    ids = np.asarray(prompt.input_ids, dtype=np.int32).tobytes()
    step = 4 * page_tokens
    h = hash(prompt.namespace)
    out = []
    for start in range(0, len(ids) - step + 1, step):
        h = hash((h, ids[start:start + step]))
        out.append(h)
    return out


class PrefixIndex:
    """An approximate copy of one replica's radix cache: a trie over pages of token ids, each node
    stored as its chained page hash (``page_hashes``), in LRU order, at most ``max_pages``.
    Inserting a prompt refreshes its pages deepest first, so a prefix is always fresher than its
    extensions and eviction (oldest first) trims branches from their leaves."""

    def __init__(self, max_pages: int) -> None:
        self.max_pages = max_pages
        self._pages: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading pages of the prompt are indexed (does not refresh them)."""
        n = 0
        for h in hashes:
            if h not in self._pages:
                break
            n += 1
        return n

    def insert(self, hashes: Sequence[int]) -> None:
        pages = self._pages
        for h in reversed(hashes):
            pages[h] = None
            pages.move_to_end(h)
        while len(pages) > self.max_pages:
            pages.popitem(last=False)

    def clear(self) -> None:
        self._pages.clear()


class CacheAware:
    """sgl-router's cache_aware policy over approximate per-replica prefix indexes."""

    def __init__(self, num_replicas: int, cache_threshold: float = 0.5,
                 balance_abs_threshold: int = 32, balance_rel_threshold: float = 1.5,
                 max_tokens: int = MAX_INDEXED_TOKENS, page_tokens: int = PAGE_TOKENS) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.page_tokens = page_tokens
        self.indexes = [PrefixIndex(max(1, max_tokens // page_tokens))
                        for _ in range(num_replicas)]

    def choose(self, prompt: Prompt, loads: Sequence[int]) -> int:
        hashes = page_hashes(prompt, self.page_tokens)
        if self.imbalanced(loads):
            pick = shortest_queue(loads)
        else:
            pick = self._by_cache(hashes, len(prompt.input_ids), loads)
        self.indexes[pick].insert(hashes)  # the replica will cache the prompt
        return pick

    def imbalanced(self, loads: Sequence[int]) -> bool:
        """sgl-router's rule: the busiest replica has more than ``balance_abs_threshold`` more
        requests in flight than the idlest and more than ``balance_rel_threshold`` times as many."""
        low, high = min(loads), max(loads)
        return high - low > self.balance_abs_threshold and high > self.balance_rel_threshold * low

    def _by_cache(self, hashes: list[int], num_tokens: int, loads: Sequence[int]) -> int:
        """The replica with the longest cached prefix (ties: the shorter queue, then the lower
        index) when it covers ``cache_threshold`` of the prompt; else the shortest queue, ties
        to the replica with the fewest indexed pages (the most room, as sgl-router's smallest
        tree), then the lowest index."""
        matched = [index.match(hashes) for index in self.indexes]
        best = min(range(len(loads)), key=lambda r: (-matched[r], loads[r], r))
        covered = matched[best] * self.page_tokens
        if covered and covered >= self.cache_threshold * num_tokens:
            return best
        return min(range(len(loads)), key=lambda r: (loads[r], len(self.indexes[r]), r))

    def forget_cached(self) -> None:
        for index in self.indexes:
            index.clear()


# The --load-balance-method choices (server_args.LOAD_BALANCE_METHODS).
POLICIES: dict[str, type] = {
    "round_robin": RoundRobin,
    "shortest_queue": ShortestQueue,
    "cache_aware": CacheAware,
}


def make_policy(method: str, num_replicas: int) -> Policy:
    """The policy named by ``--load-balance-method`` (validated by ServerArgs)."""
    return POLICIES[method](num_replicas)
