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
from sglang.srt.managers.io_struct import (
    EMBEDDING_UNSUPPORTED_FIELDS,
    UNSUPPORTED_FIELDS,
    EmbeddingReqInput,
    EngineReady,
    GenerateReqInput,
    SingleGenerateReq,
)
from sglang.srt.managers.stop_checker import compile_stop_regex
from sglang.srt.sampling.custom_logit_processor import load_custom_logit_processor
from sglang.srt.sampling.sampling_params import SamplingLimits, SamplingParams
from sglang.srt.server_args import ServerArgs

RID_MAX_CHARS = 1024
# Text reaching the tokenizer is at most this many times (context length x longest token) long:
# longer text cannot fit the context (the factor leaves room for normalizers that merge characters).
PROMPT_CHARS_SLACK = 2


class RequestValidator:
    def __init__(self, args: ServerArgs, info: EngineReady, tokenizer: Any = None) -> None:
        self.args = args
        self.info = info
        self.limits = _core.RequestLimits(info.context_length, info.max_sequence_len,
                                          info.vocab_size)
        self.sampling_limits = SamplingLimits(args.max_stop_strings, args.max_stop_string_length)
        self.preferred = args.preferred_sampling_params_dict
        self.max_prompt_chars = None
        if tokenizer is not None:
            longest = max_token_chars(tokenizer)
            self.max_prompt_chars = info.context_length * longest * PROMPT_CHARS_SLACK

    # ---- the request as a whole (before it is split into items) -------------------------------
    def check_request(self, obj: GenerateReqInput) -> None:
        """Rules on the whole body: fields not supported yet, one input kind, request ids, n and
        the batch size (so that nothing large is built for a request that is refused)."""
        unsupported = obj.unsupported_fields()
        if unsupported:
            name = unsupported[0]
            raise ValueError(f"{name} is not supported by this server yet: it needs "
                             f"{UNSUPPORTED_FIELDS[name]}. Remove the field.")
        given = [n for n in ("text", "input_ids", "input_embeds") if getattr(obj, n) is not None]
        if len(given) > 1:
            raise ValueError(f"Only one of text, input_ids or input_embeds may be provided, "
                             f"got {' and '.join(given)}.")
        for rid in obj.rid if isinstance(obj.rid, list) else [obj.rid]:
            if rid is not None and not 0 < len(rid) <= RID_MAX_CHARS:
                raise ValueError(f"rid must be a non-empty string of at most {RID_MAX_CHARS} "
                                 f"characters, got {len(rid)} characters.")
        params = obj.sampling_params
        n = 1
        for sp in params if isinstance(params, list) else [params]:
            value = (sp or {}).get("n") if isinstance(sp, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                if value > self.args.max_n:
                    raise ValueError(f"n must be at most {self.args.max_n} (--max-n), got "
                                     f"{value}.")
                n = max(n, value)
        items = obj.batch_size() * n
        if items > self.args.max_batch_size:
            raise ValueError(f"The request asks for {items} generations (prompts x n), more than "
                             f"the server's limit of {self.args.max_batch_size} "
                             "(--max-batch-size).")

    def check_embedding_request(self, obj: EmbeddingReqInput) -> None:
        """Rules on an /encode body: fields not supported yet, one input kind, request ids, the
        batch size and ``dimensions`` (Matryoshka models only, at most the hidden size)."""
        unsupported = obj.unsupported_fields()
        if unsupported:
            name = unsupported[0]
            raise ValueError(f"{name} is not supported by this server yet: it needs "
                             f"{EMBEDDING_UNSUPPORTED_FIELDS[name]}. Remove the field.")
        if obj.text is not None and obj.input_ids is not None:
            raise ValueError("Only one of text or input_ids may be provided, got text and "
                             "input_ids.")
        for rid in obj.rid if isinstance(obj.rid, list) else [obj.rid]:
            if rid is not None and not 0 < len(rid) <= RID_MAX_CHARS:
                raise ValueError(f"rid must be a non-empty string of at most {RID_MAX_CHARS} "
                                 f"characters, got {len(rid)} characters.")
        items = len(obj.text) if isinstance(obj.text, list) else (
            len(obj.input_ids) if obj.input_ids and isinstance(obj.input_ids[0], list) else 1)
        if items > self.args.max_batch_size:
            raise ValueError(f"The request holds {items} inputs, more than the server's limit "
                             f"of {self.args.max_batch_size} (--max-batch-size).")
        if obj.dimensions is not None:
            if obj.dimensions < 1:
                raise ValueError("Requested dimensions must be greater than 0")
            if not self.info.matryoshka:
                raise ValueError(f"Model '{self.args.model_path}' does not support matryoshka "
                                 "representation, changing output dimensions will lead to poor "
                                 "results.")
            if obj.dimensions > self.info.hidden_size:
                raise ValueError("Provided dimensions are greater than max embedding dimension: "
                                 f"{self.info.hidden_size}")

    def check_embedding_prompt(self, input_ids: list[int]) -> None:
        """An embedding input: not empty, at most the model's length, ids in the vocabulary."""
        if not input_ids:
            raise ValueError("The input cannot be empty.")
        if len(input_ids) > self.info.context_length:
            raise ValueError(f"The input ({len(input_ids)} tokens) is longer than the model's "
                             f"context length ({self.info.context_length} tokens).")
        self.check_token_ids("Input token id", input_ids)

    def check_text(self, text: str) -> None:
        """Refuses, without tokenizing it, text too long to fit the context in any tokenization."""
        if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
            raise ValueError(f"The input ({len(text)} characters) is longer than the model's "
                             f"context length ({self.info.context_length} tokens) can hold.")

    # ---- one item ------------------------------------------------------------------------------
    def check_prompt(self, input_ids: list[int]) -> None:
        """The core's prompt rules (empty, context, KV pool, vocabulary)."""
        ids = _int_array(input_ids, "input_ids")
        if ids.size:
            core_check(self.limits.check_token_ids, "Input token id", ids)
        core_check(self.limits.check_prompt, ids.astype(np.int32))

    def check_token_ids(self, label: str, ids: list[int]) -> None:
        """Every id inside the vocabulary (the core's rule): "<label> <id> is out of ..."."""
        if ids:
            core_check(self.limits.check_token_ids, label, _int_array(ids, label.split(":")[0]))

    def check_logprob_options(self, single: SingleGenerateReq, prompt_len: int) -> None:
        start = single.logprob_start_len
        if start < -1:
            raise ValueError(f"logprob_start_len must be -1 (no prompt logprobs) or at least 0, "
                             f"got {start}.")
        if single.return_logprob and start >= prompt_len:
            raise ValueError(f"logprob_start_len={start} is higher than the number of input "
                             f"tokens ({prompt_len}). Please use a smaller logprob_start_len.")
        top = single.top_logprobs_num
        if not 0 <= top <= self.args.max_top_logprobs_num:
            raise ValueError(f"top_logprobs_num must be in [0, {self.args.max_top_logprobs_num}] "
                             f"(--max-top-logprobs-num), got {top}.")
        ids = single.token_ids_logprob or []
        if len(ids) > self.args.max_token_ids_logprob:
            raise ValueError(f"token_ids_logprob may hold at most {self.args.max_token_ids_logprob}"
                             f" token ids (--max-token-ids-logprob), got {len(ids)}.")
        self.check_token_ids("token_ids_logprob: token id", ids)

    def sampling_params(self, single: SingleGenerateReq, prompt_len: int) -> SamplingParams:
        """The request's validated, normalised sampling parameters (``--preferred-sampling-params``
        under its own), with max_new_tokens fitted to the context."""
        raw = dict(self.preferred or {})
        raw.update(single.sampling_params)
        raw.pop("n", None)
        sampling = SamplingParams.from_dict(raw)
        sampling.verify(self.info.vocab_size, self.sampling_limits)
        self.check_token_ids("stop_token_ids: token id", sampling.stop_token_ids or [])
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


def max_token_chars(tokenizer: Any) -> int:
    """The longest token of the vocabulary, in characters of its vocabulary string (at least
    as long as its text: byte-level and sentencepiece pieces map one byte or piece to one char)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return 1 << 10
    return max((len(token) for token in vocab), default=1 << 10)


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
