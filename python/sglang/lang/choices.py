"""How ``select`` / ``gen(choices=...)`` picks one choice from the prompt logprobs of each.

A method is a callable singleton taking the keywords ``choices``, ``normalized_prompt_logprobs``,
``input_token_logprobs``, ``output_token_logprobs`` and ``unconditional_token_logprobs``; a token
entry is ``[logprob, token_id, text | None]``. It returns a ``ChoicesDecision``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] | None = None


class ChoicesSamplingMethod(ABC):
    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    @abstractmethod
    def __call__(self, *, choices: list[str], normalized_prompt_logprobs: list[float],
                 input_token_logprobs: list[list[Any]], output_token_logprobs: list[list[Any]],
                 unconditional_token_logprobs: list[list[Any]] | None = None
                 ) -> ChoicesDecision: ...


def _argmax(values: list[float]) -> int:
    """Index of the largest value; ties go to the first."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean logprob per token."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        best = _argmax(normalized_prompt_logprobs)
        return ChoicesDecision(choices[best], {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
        })


token_length_normalized = TokenLengthNormalized()


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Token by token, keep the choices whose logprob is the best among those still in the race.

    Rows shorter than the longest choice are padded with the mean of their own logprobs.
    """

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        matrix = self._logprob_matrix(input_token_logprobs)
        remaining = list(range(len(choices)))
        for column in range(len(matrix[0]) if matrix else 0):
            best = max(matrix[row][column] for row in remaining)
            remaining = [row for row in remaining if matrix[row][column] == best]
            if len(remaining) == 1:
                break
        return ChoicesDecision(choices[remaining[0]], {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
            "greedy_logprob_matrix": matrix,
        })

    @staticmethod
    def _logprob_matrix(input_token_logprobs: list[list[Any]]) -> list[list[float]]:
        rows = [[entry[0] for entry in tokens] for tokens in input_token_logprobs]
        width = max((len(r) for r in rows), default=0)
        return [r + [_mean(r)] * (width - len(r)) for r in rows]


greedy_token_selection = GreedyTokenSelection()


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice whose tokens gain most over their unconditional likelihood (mean difference)."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("Unconditional token logprobs are required for this method.")
        scores = []
        for conditional, unconditional in zip(input_token_logprobs,
                                              unconditional_token_logprobs):
            uncond = [entry[0] for entry in unconditional]
            if uncond and uncond[0] is None:
                uncond[0] = 0.0
            scores.append(_mean([c[0] - u for c, u in zip(conditional, uncond)]))
        best = _argmax(scores)
        return ChoicesDecision(choices[best], {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
            "unconditional_token_logprobs": unconditional_token_logprobs,
            "normalized_unconditional_prompt_logprobs": scores,
        })


unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
