"""The expression nodes a program builds (``s += gen(...)``) and ``SglFunction``.

Nodes are plain data: the interpreter (``interpreter.StreamExecutor``) executes them, the tracer
(``tracer``) records them. ``str + expr`` and ``expr + str`` give a flat ``SglExprList``.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from sglang.lang.global_config import global_config

REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""  # the quotes are part of it


@dataclasses.dataclass
class SglSamplingParams:
    """The sampling parameters of one gen, resolved against the run-level defaults."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    n: int = 1
    stop: str | list[str] | tuple = ()
    stop_token_ids: list[int] | tuple = ()
    stop_regex: str | list[str] | tuple = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    json_schema: str | None = None
    # Typed generation: int, float, str, bool (or their names)
    dtype: Any = None
    regex: str | None = None

    def clone(self) -> SglSamplingParams:
        return dataclasses.replace(self)

    def _warn_regex(self, backend: str) -> None:
        if self.regex is not None:
            warnings.warn(f"Regular expression is not supported in the {backend} backend.",
                          stacklevel=3)

    def to_srt_kwargs(self) -> dict[str, Any]:
        """The ``sampling_params`` of a native ``/generate`` request."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "n": self.n,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "stop_regex": self.stop_regex,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "ignore_eos": self.ignore_eos,
            "regex": self.regex,
            "json_schema": self.json_schema,
        }

    def to_openai_kwargs(self) -> dict[str, Any]:
        self._warn_regex("OpenAI")
        return {
            "max_tokens": self.max_new_tokens,
            "max_completion_tokens": self.max_new_tokens,
            "n": self.n,
            "stop": self.stop or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }

    def to_anthropic_kwargs(self) -> dict[str, Any]:
        self._warn_regex("Anthropic")
        return {
            "max_tokens": self.max_new_tokens,
            "stop_sequences": ([self.stop] if isinstance(self.stop, str) else list(self.stop)),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }

    def to_vertexai_kwargs(self) -> dict[str, Any]:
        self._warn_regex("VertexAI")
        return {
            "candidate_count": 1,
            "max_output_tokens": self.max_new_tokens,
            "stop_sequences": self.stop,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k if self.top_k > 0 else None,
        }

    def to_litellm_kwargs(self) -> dict[str, Any]:
        self._warn_regex("LiteLLM")
        return {
            "max_tokens": self.max_new_tokens,
            "stop": self.stop or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SglSamplingParams))


def _run_defaults(max_new_tokens, n, stop, stop_token_ids, stop_regex, temperature, top_p, top_k,
                  min_p, frequency_penalty, presence_penalty, ignore_eos, return_logprob,
                  logprob_start_len, top_logprobs_num,
                  return_text_in_logprobs) -> SglSamplingParams:
    """The run-level defaults of ``run`` / ``run_batch``."""
    return SglSamplingParams(
        max_new_tokens=max_new_tokens, n=n, stop=stop if stop is not None else (),
        stop_token_ids=stop_token_ids if stop_token_ids is not None else (),
        stop_regex=stop_regex if stop_regex is not None else (), temperature=temperature,
        top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, ignore_eos=ignore_eos, return_logprob=return_logprob,
        logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs)


class SglFunction:
    """A program: ``@sgl.function def f(s, ...)``; run it with ``run`` / ``run_batch``."""

    def __init__(self, func: Callable, num_api_spec_tokens: int | None = None,
                 bind_arguments: dict[str, Any] | None = None) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = bind_arguments or {}
        self.pin_prefix_rid = None
        spec = inspect.getfullargspec(func)
        assert spec.args and spec.args[0] == "s", 'The first argument must be "s"'
        self.arg_names = spec.args[1:]
        defaults = spec.defaults or ()
        self.arg_defaults = dict(zip(self.arg_names[len(self.arg_names) - len(defaults):],
                                     defaults)) if defaults else {}

    def bind(self, **kwargs: Any) -> SglFunction:
        """A new function with some arguments fixed (``num_api_spec_tokens`` is not kept)."""
        assert all(key in self.arg_names for key in kwargs), (
            f"bind() got arguments that are not parameters: {set(kwargs) - set(self.arg_names)}")
        return SglFunction(self.func, bind_arguments={**self.bind_arguments, **kwargs})

    def run(self, *args: Any, max_new_tokens: int = 128, n: int = 1, stop=None,
            stop_token_ids=None, stop_regex=None, temperature: float = 1.0, top_p: float = 1.0,
            top_k: int = -1, min_p: float = 0.0, frequency_penalty: float = 0.0,
            presence_penalty: float = 0.0, ignore_eos: bool = False, return_logprob=None,
            logprob_start_len=None, top_logprobs_num=None, return_text_in_logprobs=None,
            stream: bool = False, backend=None, use_thread: bool = True, **kwargs: Any):
        from sglang.lang.interpreter import run_program

        defaults = _run_defaults(max_new_tokens, n, stop, stop_token_ids, stop_regex,
                                 temperature, top_p, top_k, min_p, frequency_penalty,
                                 presence_penalty, ignore_eos, return_logprob,
                                 logprob_start_len, top_logprobs_num, return_text_in_logprobs)
        backend = backend or global_config.default_backend
        return run_program(self, backend, args, kwargs, defaults, stream, use_thread=use_thread)

    def run_batch(self, batch_kwargs, *, max_new_tokens: int = 128, n: int = 1, stop=None,
                  stop_token_ids=None, stop_regex=None, temperature: float = 1.0,
                  top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
                  frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                  ignore_eos: bool = False, return_logprob=None, logprob_start_len=None,
                  top_logprobs_num=None, return_text_in_logprobs=None, backend=None,
                  num_threads: int | str = "auto", progress_bar: bool = False,
                  generator_style: bool = False):
        from sglang.lang.interpreter import run_program_batch

        assert isinstance(batch_kwargs, (list, tuple)), "run_batch takes a list of arguments"
        if len(batch_kwargs) == 0:
            return []
        if not isinstance(batch_kwargs[0], dict):
            batch_kwargs = [self._positional_to_kwargs(args) for args in batch_kwargs]
        defaults = _run_defaults(max_new_tokens, n, stop, stop_token_ids, stop_regex,
                                 temperature, top_p, top_k, min_p, frequency_penalty,
                                 presence_penalty, ignore_eos, return_logprob,
                                 logprob_start_len, top_logprobs_num, return_text_in_logprobs)
        backend = backend or global_config.default_backend
        return run_program_batch(self, backend, batch_kwargs, defaults, num_threads,
                                 progress_bar, generator_style=generator_style)

    def _positional_to_kwargs(self, args: Any) -> dict[str, Any]:
        if not isinstance(args, (list, tuple)) or len(args) != len(self.arg_names):
            raise Exception("Given arguments mismatch the SGL function signature")
        return dict(zip(self.arg_names, args))

    def trace(self, *, backend=None, **kwargs: Any):
        from sglang.lang.backend.base_backend import BaseBackend
        from sglang.lang.tracer import trace_program

        return trace_program(self, kwargs, backend or BaseBackend())

    def cache(self, backend=None):
        from sglang.lang.interpreter import cache_program

        return cache_program(self, backend or global_config.default_backend)

    def __call__(self, *args: Any, **kwargs: Any):
        from sglang.lang.tracer import TracingScope

        scope = TracingScope.get_current_scope()
        if scope is None:
            return self.run(*args, **kwargs)
        kwargs["backend"] = scope.tracer_state.backend
        return self.trace(*args, **kwargs)


class SglExpr:
    """A node of a program. ``+`` with a str or another node gives a flat ``SglExprList``."""

    node_ct = 0

    def __init__(self) -> None:
        self.node_id = SglExpr.node_ct
        SglExpr.node_ct += 1
        self.prev_node: SglExpr | None = None
        self.pid: int | None = None

    def __add__(self, other: Any) -> SglExprList:
        if isinstance(other, str):
            other = SglConstantText(other)
        assert isinstance(other, SglExpr), f"cannot add {type(other).__name__} to an expression"
        return self.concatenate_ir(self, other)

    def __radd__(self, other: Any) -> SglExprList:
        if isinstance(other, str):
            other = SglConstantText(other)
        assert isinstance(other, SglExpr), f"cannot add an expression to {type(other).__name__}"
        return self.concatenate_ir(other, self)

    @staticmethod
    def concatenate_ir(a: SglExpr, b: SglExpr) -> SglExprList:
        items: list[SglExpr] = []
        for x in (a, b):
            items.extend(x.expr_list if isinstance(x, SglExprList) else [x])
        return SglExprList(items)

    def print_graph_dfs(self) -> str:
        """The chain of nodes that led here, one per line (printed and returned)."""
        lines, node, seen = [], self, set()
        while node is not None and id(node) not in seen:
            seen.add(id(node))
            lines.append(f"%{node.node_id} = {node!r}")
            node = node.prev_node
        graph = "\n".join(reversed(lines))
        print(graph)
        return graph


class SglExprList(SglExpr):
    def __init__(self, expr_list: list[SglExpr]) -> None:
        super().__init__()
        self.expr_list = expr_list

    def __repr__(self) -> str:
        return f"ExprList({self.expr_list})"


class SglArgument(SglExpr):
    """A program argument while tracing: a placeholder, not a value."""

    def __init__(self, name: str, value: Any) -> None:
        super().__init__()
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"Argument(name={self.name}, value={self.value!r})"

    def __len__(self) -> int:
        raise TypeError("len() of an argument is unknown while tracing")

    def __getitem__(self, key: Any) -> Any:
        raise TypeError("an argument cannot be indexed while tracing")

    def __int__(self) -> int:
        raise TypeError("an argument has no value while tracing")

    def __bool__(self) -> bool:
        raise TypeError("an argument has no truth value while tracing")

    def __format__(self, spec: str) -> str:
        raise TypeError("an argument cannot be formatted while tracing; use + instead")

    def __str__(self) -> str:
        raise TypeError("an argument has no text while tracing; use + instead")


class SglImage(SglExpr):
    def __init__(self, path: Any) -> None:
        super().__init__()
        self.path = path

    def __repr__(self) -> str:
        return f"SglImage({type(self.path).__name__})"


class SglVideo(SglExpr):
    def __init__(self, path: str, num_frames: int) -> None:
        super().__init__()
        self.path = path
        self.num_frames = num_frames

    def __repr__(self) -> str:
        return f"SglVideo({self.path!r}, {self.num_frames})"


class SglGen(SglExpr):
    """Generate text into variable ``name``; unspecified sampling fields stay None."""

    def __init__(self, name: str | None = None, **sampling: Any) -> None:
        super().__init__()
        self.name = name
        unknown = set(sampling) - set(SAMPLING_FIELDS)
        assert not unknown, f"unknown sampling fields: {unknown}"
        self.sampling_params = SglSamplingParams(**{f: sampling.get(f) for f in SAMPLING_FIELDS})

    def __repr__(self) -> str:
        return f"Gen('{self.name}')"


class SglConstantText(SglExpr):
    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class SglRoleBegin(SglExpr):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def __repr__(self) -> str:
        return f"RoleBegin({self.role})"


class SglRoleEnd(SglExpr):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def __repr__(self) -> str:
        return f"RoleEnd({self.role})"


class SglSelect(SglExpr):
    def __init__(self, name: str | None, choices: list[str], temperature: float,
                 choices_method: Any) -> None:
        super().__init__()
        self.name = name
        self.choices = choices
        self.temperature = temperature
        self.choices_method = choices_method

    def __repr__(self) -> str:
        return f"Select({self.name}, choices={self.choices}, choices_method={self.choices_method})"


class SglFork(SglExpr):
    def __init__(self, number: int, position_ids_offset: Any = None) -> None:
        super().__init__()
        self.number = number
        self.position_ids_offset = position_ids_offset

    def __repr__(self) -> str:
        return f"Fork(%{self.prev_node.node_id if self.prev_node else None}, number={self.number})"


class SglGetForkItem(SglExpr):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def __repr__(self) -> str:
        return f"GetForkItem(%{self.prev_node.node_id if self.prev_node else None}, {self.index})"


class SglVariable(SglExpr):
    """A variable read while tracing (``s["x"]``), produced by ``source``."""

    def __init__(self, name: str, source: SglExpr | None) -> None:
        super().__init__()
        self.name = name
        self.source = source

    def __repr__(self) -> str:
        return f"Variable('{self.name}', source=%{getattr(self.source, 'node_id', None)})"


class SglVarScopeBegin(SglExpr):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeBegin('{self.name}')"


class SglVarScopeEnd(SglExpr):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeEnd('{self.name}')"


class SglConcateAndAppend(SglExpr):
    def __init__(self, states: list[Any]) -> None:
        super().__init__()
        self.states = states

    def __repr__(self) -> str:
        return f"ConcatenateAndAppend('{self.states}')"


class SglCommitLazy(SglExpr):
    def __repr__(self) -> str:
        return "CommitLazy()"


class SglSeparateReasoning(SglExpr):
    """Split the reasoning out of the gen before it, into ``<name>_reasoning_content``."""

    def __init__(self, model_type: str | None, expr: SglExpr | None) -> None:
        super().__init__()
        self.model_type = model_type
        self.expr = expr
        self.name = self.process_name_for_reasoning(self._gen_name(expr))

    @staticmethod
    def _gen_name(expr: SglExpr | None) -> str | None:
        if isinstance(expr, (SglGen, SglSelect)):
            return expr.name
        if isinstance(expr, SglExprList):
            for item in reversed(expr.expr_list):
                if isinstance(item, (SglGen, SglSelect)):
                    return item.name
        return None

    @staticmethod
    def process_name_for_reasoning(name: str | None) -> str:
        if not name:
            raise ValueError("name must be provided")
        return f"{name}_reasoning_content"

    def __repr__(self) -> str:
        return f"SeparateReasoning(model_type={self.model_type}, name={self.name})"
