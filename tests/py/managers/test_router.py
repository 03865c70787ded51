"""The data-parallel routing policies (managers/router.py), without a server."""

from __future__ import annotations

import pytest
from sglang.srt.managers.router import (
    POLICIES,
    CacheAware,
    PrefixIndex,
    Prompt,
    RoundRobin,
    ShortestQueue,
    make_policy,
    page_hashes,
)
from sglang.srt.server_args import LOAD_BALANCE_METHODS, ServerArgs

SHARED = list(range(100, 164))  # 64 tokens: 4 pages of 16


def prompt(suffix: list[int], prefix: list[int] = SHARED, namespace: str = "") -> Prompt:
    return Prompt(prefix + suffix, namespace)


def test_every_method_has_a_policy() -> None:
    assert tuple(POLICIES) == LOAD_BALANCE_METHODS
    for name in LOAD_BALANCE_METHODS:
        assert isinstance(make_policy(name, 3), POLICIES[name])


def test_server_args_validate_the_method_and_sizes() -> None:
    assert ServerArgs(model_path="x").load_balance_method == "round_robin"
    assert ServerArgs(model_path="x", dp_size=4, load_balance_method="cache_aware").dp_size == 4
    with pytest.raises(ValueError, match="--load-balance-method must be one of"):
        ServerArgs(model_path="x", load_balance_method="random")
    with pytest.raises(ValueError, match="--dp-size must be at least 1"):
        ServerArgs(model_path="x", dp_size=0)
    assert ServerArgs(model_path="x", tp_size=2).tp_size == 2
    assert ServerArgs(model_path="x", tp_size=2, dp_size=2).ranks_per_node == 2  # DP x TP
    assert ServerArgs(model_path="x", tp_size=2, enable_lora=True).enable_lora  # LoRA under TP
    assert ServerArgs(model_path="x", tp_size=2, dp_size=2, enable_lora=True).enable_lora
    with pytest.raises(ValueError, match="--tp-size must be at least 1"):
        ServerArgs(model_path="x", tp_size=0)


def test_round_robin_takes_replicas_in_turn() -> None:
    policy = RoundRobin(3)
    loads = [9, 0, 0]
    assert [policy.choose(prompt([i]), loads) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_shortest_queue_ties_to_the_lowest_index() -> None:
    policy = ShortestQueue(3)
    assert policy.choose(prompt([]), [2, 1, 1]) == 1
    assert policy.choose(prompt([]), [0, 0, 0]) == 0
    assert policy.choose(prompt([]), [3, 2, 0]) == 2


def test_page_hashes_name_whole_prefixes() -> None:
    a = page_hashes(Prompt(SHARED + [1] * 20))
    b = page_hashes(Prompt(SHARED + [2] * 20))
    assert len(a) == 5 and a[:4] == b[:4] and a[4] != b[4]  # the partial page is left out
    # the same page after a different prefix is another node
    assert page_hashes(Prompt([7] * 16 + SHARED[:16]))[1] != a[0]
    assert page_hashes(Prompt(SHARED, "lora-a")) != page_hashes(Prompt(SHARED, "lora-b"))
    assert page_hashes(Prompt(SHARED[:15])) == []


def test_prefix_index_matches_leading_pages_and_evicts_leaves_first() -> None:
    index = PrefixIndex(max_pages=6)
    a = page_hashes(Prompt(SHARED + list(range(32))))  # 6 pages
    index.insert(a)
    assert index.match(a) == 6 and len(index) == 6
    b = page_hashes(Prompt(SHARED + list(range(500, 532))))  # shares 4 pages with a
    assert index.match(b) == 4
    index.insert(b)  # 2 new pages: a's two leaves (the oldest) go
    assert len(index) == 6 and index.match(b) == 6 and index.match(a) == 4
    index.clear()
    assert index.match(a) == 0


def test_cache_aware_follows_the_cached_prefix() -> None:
    policy = CacheAware(2)
    first = policy.choose(prompt([1, 2, 3]), [0, 0])
    assert first == 0
    # a different prompt: no match, the shortest queue; equal loads: the emptier index
    assert policy.choose(Prompt(list(range(1000, 1064))), [0, 0]) == 1
    # shared-prefix prompts go where the prefix is, even to the longer queue
    for i in range(5):
        assert policy.choose(prompt([50 + i] * 8), [3, 0]) == 0


def test_cache_aware_threshold() -> None:
    policy = CacheAware(2, cache_threshold=0.5)
    policy.choose(Prompt(SHARED[:32]), [0, 0])  # replica 0 caches 2 pages
    # 32 of 48 tokens cached (>= 50%): the cached replica, though its queue is longer
    assert policy.choose(Prompt(SHARED[:32] + [8] * 16), [1, 0]) == 0
    # 32 of 100 (< 50%): the shortest queue instead
    assert policy.choose(Prompt(SHARED[:32] + [9] * 68), [1, 0]) == 1


def test_cache_aware_namespaces_never_match() -> None:
    policy = CacheAware(2)
    assert policy.choose(prompt([], namespace="a"), [0, 0]) == 0
    assert policy.choose(prompt([], namespace="b"), [0, 0]) == 1
    assert policy.choose(prompt([], namespace="a"), [0, 0]) == 0


def test_cache_aware_balances_when_the_load_is_uneven() -> None:
    policy = CacheAware(2, balance_abs_threshold=32, balance_rel_threshold=1.5)
    assert policy.choose(prompt([]), [0, 0]) == 0
    assert policy.choose(prompt([]), [40, 9]) == 0  # 31 apart: the cache still wins
    assert policy.choose(prompt([]), [60, 41]) == 0  # 19 apart
    assert policy.choose(prompt([]), [50, 10]) == 1  # 40 apart and 5x: the shortest queue
    assert policy.imbalanced([50, 10]) and not policy.imbalanced([100, 67])
    # the prompt is now indexed on replica 1 as well
    assert policy.indexes[1].match(page_hashes(prompt([]))) == 4


def test_cache_aware_forgets_after_a_flush_and_caps_its_index() -> None:
    policy = CacheAware(2, max_tokens=64)
    policy.choose(prompt([]), [0, 0])
    policy.forget_cached()
    assert policy.choose(prompt([]), [1, 0]) == 1
    policy.choose(Prompt(list(range(2000, 2128))), [0, 5])  # 8 pages: 4 are kept
    assert all(len(index) <= 4 for index in policy.indexes)
