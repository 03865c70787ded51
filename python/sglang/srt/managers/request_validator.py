"""Request validation: every rule a generation request must pass before it reaches the engine.

One owner for the rules of the serving layer. The prompt rules (not empty, fits the context and
the KV pool, ids inside the vocabulary) and the generation budget are the C++ core's
(``_core.RequestLimits``, the object the scheduler itself applies); the sampling-parameter rules are
``SamplingParams.verify``'s; the server's gates (grammar backend, custom logit processors, hidden
states, no tokenizer) are here. Every failure is a ``ValueError`` whose message the HTTP layer
returns as a 400. Used by the tokenizer manager, in the HTTP process, once per request item.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from sglang import _core
from sglang.srt.constrained.base_grammar_backend import check_grammar_supported, grammar_key
from sglang.srt.managers.io_struct import EngineReady, SingleGenerateReq
from sglang.srt.managers.stop_checker import compile_stop_regex
from sglang.srt.sampling.custom_logit_processor import load_custom_logit_processor
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs


class RequestValidator:
    def __init__(self, args: ServerArgs, info: EngineReady) -> None:
        self.args = args
        self.info = info
        self.limits = _core.RequestLimits(info.context_length, info.max_sequence_len,
                                          info.vocab_size)
        self.preferred = args.preferred_sampling_params_dict

    def check_prompt(self, input_ids: list[int]) -> None:
        """The core's prompt rules (empty, context, KV pool, vocabulary)."""
        ids = _int_array(input_ids, "input_ids")
        if ids.size:
            core_check(self.limits.check_token_ids, "Input token id", ids)
        core_check(self.limits.check_prompt, ids.astype(np.int32))

    def sampling_params(self, single: SingleGenerateReq, prompt_len: int) -> SamplingParams:
        """The request's validated, normalised sampling parameters (``--preferred-sampling-params``
        under its own), with max_new_tokens fitted to the context."""
        raw = dict(self.preferred or {})
        raw.update(single.sampling_params)
        raw.pop("n", None)
        sampling = SamplingParams.from_dict(raw)
        sampling.verify(self.info.vocab_size)
        compile_stop_regex(sampling.stop_regex_list)
        sampling.normalize()
        self._check_gates(single, sampling)
        if sampling.max_new_tokens is not None:
            sampling.max_new_tokens = int(core_check(
                self.limits.fit_max_new_tokens, prompt_len, sampling.max_new_tokens,
                self.args.allow_auto_truncate))
        return sampling

    def _check_gates(self, single: SingleGenerateReq, sampling: SamplingParams) -> None:
        """Features the server must be started with (or without) for this request."""
        if self.args.skip_tokenizer_init:
            require_tokenizer(sampling)
        key = grammar_key(sampling)
        if key is not None:
            check_grammar_supported(self.args.grammar_backend, key)
        if single.custom_logit_processor:
            if not self.args.enable_custom_logit_processor:
                raise ValueError(
                    "The server is not configured to enable custom logit processor. Please set "
                    "`--enable-custom-logit-processor` to enable this feature."
                )
            load_custom_logit_processor(single.custom_logit_processor)  # 400 when malformed
        if single.return_hidden_states and not self.args.enable_return_hidden_states:
            raise ValueError(
                "The server is not configured to return hidden states. Please set "
                "`--enable-return-hidden-states` to enable this feature."
            )


def core_check(check: Any, *args: Any) -> Any:
    """Runs one of the core's checks; its refusal (CoreError) becomes a ValueError (HTTP 400)."""
    try:
        return check(*args)
    except _core.CoreError as exc:
        raise ValueError(str(exc)) from None


def _int_array(values: list[int], field: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{field} must be a list of integers within 64 bits.") from None


def require_tokenizer(sampling: SamplingParams) -> None:
    """Without a tokenizer (--skip-tokenizer-init) text stops and min_new_tokens are refused."""
    text = "(requires tokenizer to decode tokens to text for matching)."
    if sampling.stop_strings:
        raise ValueError(f"stop={sampling.stop_strings!r} is unavailable when "
                         f"skip_tokenizer_init=True {text}")
    if sampling.stop_regex_list:
        raise ValueError(f"stop_regex={sampling.stop_regex_list!r} is unavailable when "
                         f"skip_tokenizer_init=True {text}")
    if sampling.min_new_tokens > 0:
        raise ValueError(f"min_new_tokens={sampling.min_new_tokens} is unavailable when "
                         "skip_tokenizer_init=True (requires tokenizer for eos_token_id).")


def embeds_namespace(embeds: Any, hidden_size: int) -> str:
    """The radix-cache namespace of an input_embeds prompt (a hash of its content, so only
    identical embeddings share cached KV). ValueError (HTTP 400) unless ``embeds`` is a non-empty
    [tokens][hidden_size] of finite numbers."""
    if not embeds:
        raise ValueError("input_embeds cannot be empty.")
    for row in embeds:
        if len(row) != hidden_size:
            raise ValueError(f"input_embeds rows must have the model's hidden size "
                             f"({hidden_size}), got a row of {len(row)}.")
    values = np.asarray(embeds, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("input_embeds must contain only finite numbers.")
    return f"embeds:{hashlib.sha256(values.tobytes()).hexdigest()}"
