"""The primitives of the frontend language: ``function``, ``gen``, ``select``, roles, ...

Positional order of every signature is SGLang's (programs call ``gen("x", 64, stop=...)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sglang.lang.choices import ChoicesSamplingMethod, token_length_normalized
from sglang.lang.global_config import global_config
from sglang.lang.ir import (
    SglExpr,
    SglExprList,
    SglFunction,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSelect,
    SglSeparateReasoning,
    SglVideo,
)


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None):
    """``@sgl.function`` or ``@sgl.function(num_api_spec_tokens=N)``."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)

    def decorator(func: Callable) -> SglFunction:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)

    return decorator


def Runtime(*args: Any, **kwargs: Any):
    """Start this project's server in a subprocess (needs the ``srt`` extra)."""
    from sglang.lang.backend.runtime_endpoint import Runtime as _Runtime

    return _Runtime(*args, **kwargs)


def Engine(*args: Any, **kwargs: Any):
    from sglang.srt.entrypoints.engine import Engine as _Engine

    return _Engine(*args, **kwargs)


def set_default_backend(backend: Any) -> None:
    global_config.default_backend = backend


def _backend(backend: Any) -> Any:
    backend = backend or global_config.default_backend
    return backend.endpoint if hasattr(backend, "endpoint") else backend


def flush_cache(backend: Any = None) -> bool | None:
    backend = _backend(backend)
    if backend is None:
        return False
    return backend.flush_cache()


def get_server_info(backend: Any = None) -> Any:
    backend = _backend(backend)
    if backend is None:
        return None
    return backend.get_server_info()


def gen(name: str | None = None, max_tokens: int | None = None, min_tokens: int | None = None,
        n: int | None = None, stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None, stop_regex: str | list[str] | None = None,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        min_p: float | None = None, frequency_penalty: float | None = None,
        presence_penalty: float | None = None, ignore_eos: bool | None = None,
        return_logprob: bool | None = None, logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None,
        dtype: Any = None, choices: list[str] | None = None,
        choices_method: ChoicesSamplingMethod | None = None, regex: str | None = None,
        json_schema: str | None = None) -> SglExpr:
    """Generate into variable ``name``; with ``choices``, a select among them."""
    if choices:
        return SglSelect(name, choices, 0.0 if temperature is None else temperature,
                         token_length_normalized if choices_method is None else choices_method)
    if regex is not None:
        re.compile(regex)  # a bad pattern fails here, in the program, not in the server
    return SglGen(name, max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop,
                  stop_token_ids=stop_token_ids, stop_regex=stop_regex, temperature=temperature,
                  top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
                  presence_penalty=presence_penalty, ignore_eos=ignore_eos,
                  return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                  top_logprobs_num=top_logprobs_num,
                  return_text_in_logprobs=return_text_in_logprobs, dtype=dtype, regex=regex,
                  json_schema=json_schema)


def _typed_gen(dtype: type, name, max_tokens, n, stop, stop_token_ids, stop_regex, temperature,
               top_p, top_k, min_p, frequency_penalty, presence_penalty, ignore_eos,
               return_logprob, logprob_start_len, top_logprobs_num,
               return_text_in_logprobs) -> SglGen:
    return SglGen(name, max_new_tokens=max_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
                  stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k,
                  min_p=min_p, frequency_penalty=frequency_penalty,
                  presence_penalty=presence_penalty, ignore_eos=ignore_eos,
                  return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                  top_logprobs_num=top_logprobs_num,
                  return_text_in_logprobs=return_text_in_logprobs, dtype=dtype)


def gen_int(name: str | None = None, max_tokens: int | None = None, n: int | None = None,
            stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
            stop_regex: str | list[str] | None = None, temperature: float | None = None,
            top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
            frequency_penalty: float | None = None, presence_penalty: float | None = None,
            ignore_eos: bool | None = None, return_logprob: bool | None = None,
            logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
            return_text_in_logprobs: bool | None = None) -> SglGen:
    """A gen constrained to an integer."""
    return _typed_gen(int, name, max_tokens, n, stop, stop_token_ids, stop_regex, temperature,
                      top_p, top_k, min_p, frequency_penalty, presence_penalty, ignore_eos,
                      return_logprob, logprob_start_len, top_logprobs_num,
                      return_text_in_logprobs)


def gen_string(name: str | None = None, max_tokens: int | None = None, n: int | None = None,
               stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
               stop_regex: str | list[str] | None = None, temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None,
               min_p: float | None = None, frequency_penalty: float | None = None,
               presence_penalty: float | None = None, ignore_eos: bool | None = None,
               return_logprob: bool | None = None, logprob_start_len: int | None = None,
               top_logprobs_num: int | None = None,
               return_text_in_logprobs: bool | None = None) -> SglGen:
    """A gen constrained to a quoted string."""
    return _typed_gen(str, name, max_tokens, n, stop, stop_token_ids, stop_regex, temperature,
                      top_p, top_k, min_p, frequency_penalty, presence_penalty, ignore_eos,
                      return_logprob, logprob_start_len, top_logprobs_num,
                      return_text_in_logprobs)


def image(expr: Any) -> SglImage:
    return SglImage(expr)


def video(path: str, num_frames: int) -> SglVideo:
    return SglVideo(path, num_frames)


def select(name: str | None = None, choices: list[str] | None = None,
           temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> SglSelect:
    assert choices is not None, "select needs choices"
    return SglSelect(name, choices, temperature, choices_method)


def _role_common(name: str, expr: Any = None) -> SglExprList:
    inner = [] if expr is None else [expr]
    return SglExprList([SglRoleBegin(name), *inner, SglRoleEnd(name)])


def system(expr: Any = None) -> SglExprList:
    return _role_common("system", expr)


def user(expr: Any = None) -> SglExprList:
    return _role_common("user", expr)


def assistant(expr: Any = None) -> SglExprList:
    return _role_common("assistant", expr)


def system_begin() -> SglRoleBegin:
    return SglRoleBegin("system")


def system_end() -> SglRoleEnd:
    return SglRoleEnd("system")


def user_begin() -> SglRoleBegin:
    return SglRoleBegin("user")


def user_end() -> SglRoleEnd:
    return SglRoleEnd("user")


def assistant_begin() -> SglRoleBegin:
    return SglRoleBegin("assistant")


def assistant_end() -> SglRoleEnd:
    return SglRoleEnd("assistant")


def separate_reasoning(expr: Any = None, model_type: str | None = None) -> SglExprList:
    """Split the reasoning of the gen ``expr`` into ``<name>_reasoning_content``."""
    return SglExprList([expr, SglSeparateReasoning(model_type, expr=expr)])
