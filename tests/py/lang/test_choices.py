"""The three choice methods on SGLang's test vector (frontend document §1)."""

from __future__ import annotations

import pytest
from sglang.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)

CHOICES = ["organ", "organism", "antidisestablishmentarianism"]
INPUT = [
    [[-0.1, 1, None]],
    [[-0.1, 1, None], [-0.3, 2, None]],
    [[-0.4, 3, None], [-0.25, 4, None], [-0.1, 5, None], [-0.01, 6, None], [-0.01, 7, None],
     [-0.01, 8, None], [-0.01, 9, None], [-0.01, 2, None]],
]
UNCONDITIONAL = [
    [[None, 1, None]],
    [[None, 1, None], [-1.4, 2, None]],
    [[None, 3, None], [-0.25, 4, None], [-0.1, 5, None], [-0.01, 6, None], [-0.01, 7, None],
     [-0.01, 8, None], [-0.01, 9, None], [-0.01, 2, None]],
]
ARGS = dict(choices=CHOICES, normalized_prompt_logprobs=[-0.1, -0.2, -0.05],
            input_token_logprobs=INPUT, output_token_logprobs=[[[-0.1, 10, None]]] * 3)


def test_token_length_normalized_picks_the_best_mean() -> None:
    decision = token_length_normalized(**ARGS)
    assert decision.decision == "antidisestablishmentarianism"
    assert decision.meta_info["normalized_prompt_logprobs"] == [-0.1, -0.2, -0.05]


def test_greedy_token_selection_walks_token_by_token() -> None:
    decision = greedy_token_selection(**ARGS)
    assert decision.decision == "organ"
    matrix = decision.meta_info["greedy_logprob_matrix"]
    assert len(matrix) == 3 and all(len(row) == 8 for row in matrix)
    assert matrix[1][2:] == pytest.approx([-0.2] * 6)  # padded with the row's own mean


def test_unconditional_likelihood_normalized() -> None:
    assert unconditional_likelihood_normalized.requires_unconditional_logprobs
    decision = unconditional_likelihood_normalized(**ARGS,
                                                   unconditional_token_logprobs=UNCONDITIONAL)
    assert decision.decision == "organism"
    assert decision.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx(
        [-0.1, 0.5, -0.05])


def test_unconditional_needs_the_unconditional_logprobs() -> None:
    with pytest.raises(ValueError):
        unconditional_likelihood_normalized(**ARGS)


def test_ties_go_to_the_first_choice() -> None:
    args = dict(ARGS, normalized_prompt_logprobs=[-0.1, -0.1, -0.2])
    assert token_length_normalized(**args).decision == "organ"
