"""Sampling parameters of one request: parsing, defaults, normalisation and validation.

Built in the HTTP process from the request's ``sampling_params`` dict (``SamplingParams.from_dict``),
validated there (errors are ``ValueError`` with the contract's exact messages, section 3.1, checked
in the contract's order), then sent to the engine process, which reads the normalised fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

TOP_K_ALL = 1 << 30
MAX_STOP_REGEX = 32
MAX_STOP_REGEX_BYTES = 256
GREEDY_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class SamplingLimits:
    """Server limits on the size of sampling parameters (flags of the same names)."""

    max_stop_strings: int = 32
    max_stop_string_length: int = 512


@dataclasses.dataclass
class SamplingParams:
    max_new_tokens: int | None = 128
    min_new_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = TOP_K_ALL
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    stream_interval: int | None = None
    logit_bias: dict[str, float] | None = None
    sampling_seed: int | None = None
    custom_params: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params must be an object, got {type(d).__name__}.")
        known = cls.__dataclass_fields__
        for key in d:
            if key not in known:
                raise ValueError(
                    f"Unknown sampling parameter '{key}'. Supported: {', '.join(known)}."
                )
        # An explicit null means "the default".
        values = {k: v for k, v in d.items() if v is not None or k == "max_new_tokens"}
        params = cls(**values)
        params._check_types()
        return params

    def _check_types(self) -> None:
        def want(name: str, ok: bool, kind: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"{name} must be {kind}, got {value!r}.")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return (isinstance(v, (int, float))) and not isinstance(v, bool)

        want(
            "max_new_tokens",
            self.max_new_tokens is None or is_int(self.max_new_tokens),
            "an integer or null",
        )
        want("min_new_tokens", is_int(self.min_new_tokens), "an integer")
        for name in (
            "temperature",
            "top_p",
            "min_p",
            "frequency_penalty",
            "presence_penalty",
            "repetition_penalty",
        ):
            want(name, is_num(getattr(self, name)), "a number")
        want("top_k", is_int(self.top_k), "an integer")
        want("n", is_int(self.n), "an integer")
        for name in (
            "ignore_eos",
            "skip_special_tokens",
            "spaces_between_special_tokens",
            "no_stop_trim",
        ):
            want(name, isinstance(getattr(self, name), bool), "a boolean")
        want(
            "stop",
            self.stop is None
            or isinstance(self.stop, str)
            or (isinstance(self.stop, list) and all(isinstance(s, str) for s in self.stop)),
            "a string or a list of strings",
        )
        want(
            "stop_regex",
            self.stop_regex is None
            or isinstance(self.stop_regex, str)
            or (
                isinstance(self.stop_regex, list)
                and all(isinstance(s, str) for s in self.stop_regex)
            ),
            "a string or a list of strings",
        )
        want(
            "stop_token_ids",
            self.stop_token_ids is None
            or (
                isinstance(self.stop_token_ids, list)
                and all(is_int(t) for t in self.stop_token_ids)
            ),
            "a list of integers",
        )
        want(
            "stream_interval",
            self.stream_interval is None or is_int(self.stream_interval),
            "an integer",
        )
        want(
            "sampling_seed", self.sampling_seed is None or is_int(self.sampling_seed), "an integer"
        )
        want(
            "logit_bias",
            self.logit_bias is None
            or (
                isinstance(self.logit_bias, dict)
                and all(is_num(v) for v in self.logit_bias.values())
            ),
            "an object mapping token ids to numbers",
        )
        want(
            "custom_params",
            self.custom_params is None or isinstance(self.custom_params, dict),
            "an object",
        )
        for name in ("json_schema", "regex", "ebnf", "structural_tag"):
            v = getattr(self, name)
            want(name, v is None or isinstance(v, str), "a string")

    # ---- derived views -------------------------------------------------------------------------
    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def stop_regex_list(self) -> list[str]:
        if self.stop_regex is None:
            return []
        return [self.stop_regex] if isinstance(self.stop_regex, str) else list(self.stop_regex)

    @property
    def is_greedy(self) -> bool:
        return self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (
            self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    # ---- normalisation and validation ----------------------------------------------------------
    def normalize(self) -> None:
        """Greedy (temperature ~ 0) becomes top_k = 1 at temperature 1; top_k -1 means all."""
        if 0 <= self.temperature < GREEDY_EPS:
            self.temperature = 1.0
            self.top_k = 1
        if self.top_k == -1:
            self.top_k = TOP_K_ALL
        for name in ("json_schema", "regex", "ebnf", "structural_tag"):
            if getattr(self, name) == "":
                setattr(self, name, None)

    def verify(self, vocab_size: int, limits: SamplingLimits = SamplingLimits()) -> None:
        """Raises ValueError with the contract's message for the first invalid field."""
        stops = self.stop_strings
        if len(stops) > limits.max_stop_strings:
            raise ValueError(
                f"at most {limits.max_stop_strings} stop strings are allowed, got {len(stops)}"
            )
        for stop in stops:
            if not stop:
                raise ValueError("Invalid 'stop': empty string. Expected a string with minimum "
                                 "length 1, but got an empty string instead.")
            if len(stop) > limits.max_stop_string_length:
                raise ValueError(
                    f"stop strings must be at most {limits.max_stop_string_length} characters "
                    f"(--max-stop-string-length), got one of {len(stop)}"
                )
        regexes = self.stop_regex_list
        if len(regexes) > MAX_STOP_REGEX:
            raise ValueError(
                f"at most {MAX_STOP_REGEX} stop_regex patterns are allowed, got {len(regexes)}"
            )
        for pattern in regexes:
            if not pattern:
                raise ValueError("Invalid 'stop_regex': empty pattern. Expected a pattern with "
                                 "minimum length 1.")
            size = len(pattern.encode("utf-8"))
            if size > MAX_STOP_REGEX_BYTES:
                raise ValueError(
                    f"stop_regex is {size} bytes, over the {MAX_STOP_REGEX_BYTES}-byte limit"
                )
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"temperature must be a non-negative finite number, got {self.temperature}."
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.top_k < 1 and self.top_k != -1:
            raise ValueError(f"top_k must be -1 (disable) or at least 1, got {self.top_k}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(
                "repetition_penalty must be in (0, 2] (1.0 = no penalty), "
                f"got {self.repetition_penalty}."
            )
        if self.max_new_tokens is not None:
            if self.max_new_tokens < 0:
                raise ValueError(f"max_new_tokens must be at least 0, got {self.max_new_tokens}.")
            if not 0 <= self.min_new_tokens <= self.max_new_tokens:
                raise ValueError(
                    f"min_new_tokens must be in [0, max_new_tokens({self.max_new_tokens})], "
                    f"got {self.min_new_tokens}."
                )
        elif self.min_new_tokens < 0:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}."
            )
        if self.stream_interval is not None and self.stream_interval < 1:
            raise ValueError(f"stream_interval must be at least 1, got {self.stream_interval}.")
        if self.logit_bias is not None:
            for key, bias in self.logit_bias.items():
                if math.isnan(bias) or bias == math.inf:
                    raise ValueError(f"logit_bias values must be finite numbers (or -inf to ban "
                                     f"a token), got {bias} for token {key}.")
                try:
                    token = int(key)
                except (TypeError, ValueError):
                    token = -1
                if not 0 <= token < vocab_size:
                    raise ValueError(
                        f"logit_bias must has keys in [0, {vocab_size - 1}], got {key}."
                    )
        if self.sampling_seed is not None and not -(2**63) <= self.sampling_seed < 2**63:
            raise ValueError(f"sampling_seed must be in [-2^63, 2^63-1], got {self.sampling_seed}.")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        grammars = [g for g in (self.json_schema, self.regex, self.ebnf, self.structural_tag) if g]
        if len(grammars) > 1:
            raise ValueError("Only one of json_schema, regex, ebnf, or structural_tag can be set.")


# ---- defaults of /v1/chat/completions (--sampling-defaults) ------------------------------------
MODEL_DEFAULT_KEYS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p")
OPENAI_DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}


def chat_sampling_defaults(mode: str, generation_config: dict[str, Any] | None) -> dict[str, Any]:
    """The values a chat request gets for the keys it omits (contract section 3.4).

    ``mode`` is ``--sampling-defaults``: ``openai`` gives OpenAI's fallbacks; ``model`` takes those
    of the keys ``MODEL_DEFAULT_KEYS`` that the model's ``generation_config.json`` sets, over the
    same fallbacks. ``/generate`` and ``/v1/completions`` never use these (SamplingParams
    defaults apply there).
    """
    if mode not in ("model", "openai"):
        raise ValueError(f"sampling defaults mode must be 'model' or 'openai', got {mode!r}")
    defaults = dict(OPENAI_DEFAULTS)
    if mode == "model":
        for key in MODEL_DEFAULT_KEYS:
            value = (generation_config or {}).get(key)
            if value is not None:
                defaults[key] = value
    return defaults
