"""Running programs: ``StreamExecutor`` executes nodes in order on a worker thread;
``ProgramState`` is the ``s`` a program body sees; ``run_program`` / ``run_program_batch`` are
what ``SglFunction.run`` / ``run_batch`` call.

The body of a program runs in the caller's thread and only *submits* nodes; the executor's worker
thread sends them to the backend one after another. Reading a variable (``s["x"]``) blocks until
the node that produces it has run. A failing node stores its exception (``s.error()``), releases
every waiting reader and skips the nodes after it.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import multiprocessing
import queue
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sglang.lang.global_config import global_config
from sglang.lang.ir import (
    SAMPLING_FIELDS,
    SglCommitLazy,
    SglConcateAndAppend,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
    SglVideo,
)
from sglang.utils import encode_image_base64, encode_video_base64

# Gens whose events are created on the caller's thread at submit time, so a read that follows
# the submit always finds an event to wait on.
_NAMED_NODES = (SglGen, SglSelect, SglVarScopeBegin, SglSeparateReasoning)


def _unwrap_backend(backend: Any) -> Any:
    """A ``Runtime`` (anything with ``.endpoint``) stands for its endpoint."""
    return backend.endpoint if hasattr(backend, "endpoint") else backend


def run_program(program, backend, func_args, func_kwargs, default_sampling_para, stream,
                sync: bool = False, use_thread: bool = True) -> ProgramState:
    backend = _unwrap_backend(backend)
    assert backend is not None, "Please specify a backend (sgl.set_default_backend or backend=)"
    func_kwargs = {**func_kwargs, **program.bind_arguments}
    executor = StreamExecutor(backend, func_kwargs, default_sampling_para, chat_template=None,
                              stream=stream, num_api_spec_tokens=program.num_api_spec_tokens,
                              use_thread=use_thread)
    state = ProgramState(executor)
    if stream:
        threading.Thread(target=_run_body, args=(state, program, func_args, func_kwargs, sync),
                         daemon=True).start()
    else:
        _run_body(state, program, func_args, func_kwargs, sync)
    return state


def _run_body(state: ProgramState, program, func_args, func_kwargs, sync: bool) -> None:
    try:
        state.ret_value = program.func(state, *func_args, **func_kwargs)
    finally:
        state.stream_executor.end()
    if sync:
        state.stream_executor.sync()
    if global_config.verbosity >= 2:
        print(state.text())


def run_program_batch(program, backend, batch_arguments: list[dict], default_sampling_para,
                      num_threads: int | str, progress_bar: bool,
                      generator_style: bool = False):
    """Run one program per argument dict on a thread pool; states come back in input order."""
    backend = _unwrap_backend(backend)
    if len(batch_arguments) > 1 and global_config.enable_precache_with_tracing:
        cache_program(program, backend)
    if num_threads == "auto":
        num_threads = max(96, multiprocessing.cpu_count() * 16)
    num_threads = max(1, min(int(num_threads), len(batch_arguments)))
    if generator_style:
        return _batch_generator(program, backend, batch_arguments, default_sampling_para,
                                num_threads, progress_bar)

    def one(arguments: dict) -> ProgramState:
        return run_program(program, backend, (), arguments, default_sampling_para, False,
                           sync=True)

    bar = _progress_bar(len(batch_arguments)) if progress_bar else None
    try:
        if num_threads == 1:
            states = []
            for arguments in batch_arguments:
                states.append(one(arguments))
                if bar is not None:
                    bar.update(1)
            return states
        with ThreadPoolExecutor(num_threads) as pool:
            futures = [pool.submit(one, arguments) for arguments in batch_arguments]
            if bar is not None:
                for future in futures:
                    future.add_done_callback(lambda _: bar.update(1))
            return [future.result() for future in futures]
    finally:
        if bar is not None:
            bar.close()


def _batch_generator(program, backend, batch_arguments, default_sampling_para, num_threads,
                     progress_bar) -> Iterator[ProgramState]:
    """Yield states in input order, submitting at most ``chunk`` programs ahead."""
    chunk = 200
    bar = _progress_bar(len(batch_arguments)) if progress_bar else None
    try:
        with ThreadPoolExecutor(num_threads) as pool:
            for start in range(0, len(batch_arguments), chunk):
                futures = [pool.submit(run_program, program, backend, (), arguments,
                                       default_sampling_para, False, True)
                           for arguments in batch_arguments[start:start + chunk]]
                for future in futures:
                    yield future.result()
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total)


def cache_program(program, backend) -> None:
    """Send the program's constant prefix to the backend's cache when it is long enough."""
    from sglang.lang.tracer import extract_prefix_by_tracing

    prefix = extract_prefix_by_tracing(program, backend)
    if prefix and len(prefix) > 64:
        backend.cache_prefix(prefix)


class StreamExecutor:
    """Executes one program's nodes in submit order and holds its text, messages and variables."""

    def __init__(self, backend, arguments, default_sampling_para, chat_template, stream,
                 num_api_spec_tokens=None, use_thread=True) -> None:
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments: dict[str, Any] = arguments
        self.default_sampling_para = default_sampling_para
        self.stream = stream

        self.variables: dict[str, Any] = {}
        self.variable_event: dict[str | None, threading.Event] = {}
        self.meta_info: dict[str | None, Any] = {}
        self.is_finished = False
        self.error_: BaseException | None = None

        self.text_ = ""
        self.messages_: list[dict] = []
        self.chat_template = chat_template or backend.get_chat_template()
        self.cur_role: str | None = None
        self.cur_role_begin_pos: int | None = None
        self.images_: list[tuple[Any, str]] = []
        self.cur_images: list[tuple[Any, str]] = []
        self.fork_start_text_pos: int | None = None

        # API speculative execution (num_api_spec_tokens): text generated ahead of the gens.
        self.num_api_spec_tokens = num_api_spec_tokens
        self.speculated_text = ""

        self.stream_text_event = threading.Event() if stream else None
        self.stream_var_event: dict[str | None, threading.Event] | None = {} if stream else None

        self.use_thread = use_thread
        self._ended = False
        if use_thread:
            self.queue: queue.Queue = queue.Queue()
            context = contextvars.copy_context()
            self.worker = threading.Thread(target=context.run, args=(self._worker_loop,),
                                           daemon=True)
            self.worker.start()

    # ---- submitting and waiting ----
    def submit(self, expr: Any) -> None:
        self._init_var_event(expr)
        if self.use_thread:
            self.queue.put(expr)
        else:
            self._execute(expr)

    def sync(self) -> None:
        if self.use_thread:
            self.queue.join()

    def get_var(self, name: str) -> Any:
        if name in self.variable_event:
            self.variable_event[name].wait()
        return self.variables[name]

    def set_var(self, name: str, value: Any) -> None:
        self.variables[name] = value

    def get_meta_info(self, name: str, timeout: float | None = None) -> Any:
        if name in self.variable_event:
            if not self.variable_event[name].wait(timeout):
                raise TimeoutError(f"Timeout while waiting for event '{name}'")
        return self.meta_info.get(name)

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> list[StreamExecutor]:
        if size > 1 and str(self.text_):
            self.submit(SglCommitLazy())
        self.sync()
        children = [StreamExecutor(self.backend, self.arguments, self.default_sampling_para,
                                   self.chat_template, self.stream) for _ in range(int(size))]
        for child in children:
            child.variables = dict(self.variables)
            child.text_ = str(self.text_)
            child.messages_ = list(self.messages_)
            child.cur_role = self.cur_role
            child.cur_role_begin_pos = self.cur_role_begin_pos
            child.fork_start_text_pos = len(self.text_)
            child.images_ = list(self.images_)
        return children

    def text(self) -> str:
        self.sync()
        return self.text_

    def messages(self) -> list[dict]:
        self.sync()
        return self.messages_

    def error(self) -> BaseException | None:
        self.sync()
        return self.error_

    def end(self) -> None:
        """No more nodes: the worker stops after the queued ones (idempotent)."""
        if self._ended:
            return
        self._ended = True
        if self.use_thread and self.worker.is_alive():
            self.queue.put(None)
        self.backend.end_program(self)

    # ---- the worker ----
    def _worker_loop(self) -> None:
        while True:
            expr = self.queue.get()
            if expr is None:
                self.queue.task_done()
                break
            try:
                if self.error_ is None:
                    self._execute(expr)
            except Exception as e:  # stored for s.error(); the program's readers are released
                warnings.warn(f"Error in stream_executor: {traceback.format_exc()}",
                              stacklevel=1)
                self.error_ = e
            if self.error_ is not None:
                self._release_all_events()
            self.queue.task_done()
            if self.stream_text_event is not None:
                self.stream_text_event.set()
        if self.stream_text_event is not None:
            self.stream_text_event.set()
        self.is_finished = True

    def _release_all_events(self) -> None:
        for event in self.variable_event.values():
            event.set()
        for event in (self.stream_var_event or {}).values():
            event.set()

    def _init_var_event(self, expr: Any) -> None:
        if isinstance(expr, _NAMED_NODES):
            self.variable_event[expr.name] = threading.Event()
            if self.stream_var_event is not None:
                self.stream_var_event[expr.name] = threading.Event()
        elif isinstance(expr, SglExprList):
            for item in expr.expr_list:
                self._init_var_event(item)

    # ---- execution of each node kind ----
    def _execute(self, other: Any) -> None:
        if isinstance(other, str):
            other = SglConstantText(other)
        assert isinstance(other, SglExpr), f"cannot execute {other!r}"
        handler = _HANDLERS.get(type(other))
        if handler is None:
            raise ValueError(f"Unknown type: {type(other)}")
        handler(self, other)

    def _execute_constant(self, expr: SglConstantText) -> None:
        self._execute_fill(expr.value)

    def _execute_list(self, expr: SglExprList) -> None:
        for item in expr.expr_list:
            self._execute(item)

    def _execute_fill(self, value: Any, prefix: bool = False) -> None:
        value = str(value)
        if self._chat_speculation() and not prefix:
            self.backend.spec_fill(self, value)
            return
        if self.speculated_text.startswith(value):
            self.speculated_text = self.speculated_text[len(value):]
        else:
            self.speculated_text = ""
        self.text_ += value

    def _chat_speculation(self) -> bool:
        """Inside an assistant turn of a chat-only API with speculative execution on."""
        return (self.cur_role == "assistant" and self.num_api_spec_tokens is not None
                and getattr(self.backend, "is_chat_model", False))

    def _execute_image(self, expr: SglImage) -> None:
        data = encode_image_base64(expr.path)
        self.images_.append((expr.path, data))
        self.cur_images.append((expr.path, data))
        self.text_ += self.chat_template.image_token

    def _execute_video(self, expr: SglVideo) -> None:
        data = encode_video_base64(expr.path, expr.num_frames)
        self.images_.append((expr.path, data))
        self.cur_images.append((expr.path, data))
        self.text_ += self.chat_template.image_token

    def _execute_gen(self, expr: SglGen) -> None:
        params = self._resolve_sampling_params(expr.sampling_params)
        name = expr.name
        if self.stream:
            assert self.num_api_spec_tokens is None, (
                "stream is not supported with api speculative execution")
            self.variables[name] = ""
            self.stream_var_event[name].set()
            for chunk, meta_info in self.backend.generate_stream(self, sampling_params=params):
                self.text_ += chunk
                self.variables[name] += chunk
                self.meta_info[name] = meta_info
                self.stream_var_event[name].set()
                self.stream_text_event.set()
            self.variable_event[name].set()
            self.stream_var_event[name].set()
            return
        if self.num_api_spec_tokens is None:
            comp, meta_info = self.backend.generate(self, sampling_params=params)
        elif getattr(self.backend, "is_chat_model", False):
            # Chat-only API: recorded now, generated at the end of the assistant turn.
            self.backend.spec_pattern_gen(self, name, params)
            return
        else:
            comp, meta_info = self._speculative_gen(params)
        self.text_ += comp[0] if isinstance(comp, list) else comp
        self.variables[name] = comp
        self.meta_info[name] = meta_info
        self.variable_event[name].set()

    def _speculative_gen(self, params: SglSamplingParams) -> tuple[str, dict]:
        """Serve a gen from text generated ahead (completion APIs), generating more if needed."""
        stop, max_new_tokens = params.stop, params.max_new_tokens
        meta_info: dict = {}

        def regenerate() -> None:
            nonlocal meta_info
            ahead = params.clone()
            ahead.max_new_tokens = max(max_new_tokens, self.num_api_spec_tokens)
            ahead.stop = None
            self.speculated_text, meta_info = self.backend.generate(self, sampling_params=ahead)

        stops = [stop] if isinstance(stop, str) else list(stop or ())
        if not stops:
            if len(self.speculated_text) < max_new_tokens:
                regenerate()
            cut = max_new_tokens
        else:
            if self.speculated_text == "":
                regenerate()
            found = [p for p in (self.speculated_text.find(s) for s in stops) if p != -1]
            cut = min(found) if found else min(max_new_tokens, len(self.speculated_text))
        comp, self.speculated_text = self.speculated_text[:cut], self.speculated_text[cut:]
        return comp, meta_info

    def _execute_select(self, expr: SglSelect) -> None:
        decision = self.backend.select(self, expr.choices, expr.temperature, expr.choices_method)
        if expr.name is not None:
            self.variables[expr.name] = decision.decision
            self.meta_info[expr.name] = decision.meta_info
            self.variable_event[expr.name].set()
            if self.stream_var_event is not None:
                self.stream_var_event[expr.name].set()
        self.text_ += decision.decision

    def _execute_variable(self, expr: SglVariable) -> None:
        source = expr.source
        value = source.get_var(expr.name) if hasattr(source, "get_var") else None
        self._execute_fill(value)

    def _execute_role_begin(self, expr: SglRoleBegin) -> None:
        assert self.cur_role is None, "Nested roles are not allowed."
        default_system = getattr(self.chat_template, "default_system_prompt", None)
        if not self.messages_ and expr.role != "system" and default_system:
            self._execute_role_begin(SglRoleBegin("system"))
            self._execute_fill(default_system)
            self._execute_role_end(SglRoleEnd("system"))
        self.cur_role = expr.role
        prefix, _ = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self._execute_fill(prefix, prefix=True)
        self.cur_role_begin_pos = len(self.text_)

    def _execute_role_end(self, expr: SglRoleEnd) -> None:
        if self._chat_speculation():
            self.backend.role_end_generate(self)
        self.cur_role = None
        content = self.text_[self.cur_role_begin_pos:].lstrip()
        _, suffix = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self._execute_fill(suffix)
        if self.cur_images:
            parts: list[dict] = [{"type": "text", "text": content}]
            parts += [{"type": "image_url",
                       "image_url": {"url": f"data:image/jpeg;base64,{data}"}}
                      for _, data in self.cur_images]
            self.messages_.append({"role": expr.role, "content": parts})
            self.cur_images = []
        else:
            self.messages_.append({"role": expr.role, "content": content})

    def _execute_var_scope_begin(self, expr: SglVarScopeBegin) -> None:
        self.variables[expr.name] = len(self.text_)

    def _execute_var_scope_end(self, expr: SglVarScopeEnd) -> None:
        self.variables[expr.name] = self.text_[self.variables[expr.name]:]
        self.variable_event[expr.name].set()

    def _execute_commit_lazy(self, expr: SglCommitLazy) -> None:
        self.backend.commit_lazy_operations(self)

    def _execute_concatenate_and_append(self, expr: SglConcateAndAppend) -> None:
        if global_config.enable_parallel_encoding and self.backend.support_concate_and_append:
            self._execute_concatenate_and_append_kv_cache(expr)
        else:
            self._execute_concatenate_and_append_text(expr)

    def _execute_concatenate_and_append_text(self, expr: SglConcateAndAppend) -> None:
        new_text = ""
        for state in expr.states:
            child = state.stream_executor
            child.sync()
            new_text += child.text_[child.fork_start_text_pos:]
        self._execute_fill(new_text)

    def _execute_concatenate_and_append_kv_cache(self, expr: SglConcateAndAppend) -> None:
        parent_len = len(self.text_)
        for state in expr.states:
            state.stream_executor.submit(SglCommitLazy())
        for state in expr.states:
            child = state.stream_executor
            child.sync()
            assert child.fork_start_text_pos == parent_len, "the parent changed after the fork"
            self.text_ += child.text_[child.fork_start_text_pos:]
        self.backend.concatenate_and_append([s.stream_executor.sid for s in expr.states],
                                            self.sid)

    def _execute_separate_reasoning(self, expr: SglSeparateReasoning) -> None:
        if self.stream:
            return  # not supported when streaming: the reasoning event never fires
        from sglang.srt.parser import reasoning_parser

        var_name = expr.name[: -len("_reasoning_content")]
        parser = reasoning_parser.ReasoningParser(expr.model_type)
        original = self.variables[var_name]
        reasoning, normal = parser.parse_non_stream(original)
        self.variables[var_name] = normal
        self.variables[expr.name] = reasoning
        self.variable_event[expr.name] = self.variable_event.get(expr.name) or threading.Event()
        self.variable_event[expr.name].set()
        if self.cur_role_begin_pos is not None:
            self.text_ = self.text_[: self.cur_role_begin_pos] + normal
        elif self.text_.endswith(original):
            self.text_ = self.text_[: len(self.text_) - len(original)] + normal

    def _resolve_sampling_params(self, sampling_params: SglSamplingParams) -> SglSamplingParams:
        """Run-level defaults, overridden by every field the gen set, plus the template stops."""
        params = copy.deepcopy(self.default_sampling_para)
        for name in SAMPLING_FIELDS:
            value = getattr(sampling_params, name, None)
            if value is not None:
                setattr(params, name, copy.deepcopy(value))
        template_stops = getattr(self.chat_template, "stop_str", ())
        if template_stops:
            stop = params.stop
            stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
            params.stop = stop + list(template_stops)
        return params

    def __del__(self) -> None:
        try:
            self.end()
        except Exception:  # interpreter shutdown; nothing left to release
            pass


_HANDLERS = {
    SglConstantText: StreamExecutor._execute_constant,
    SglGen: StreamExecutor._execute_gen,
    SglSelect: StreamExecutor._execute_select,
    SglExprList: StreamExecutor._execute_list,
    SglRoleBegin: StreamExecutor._execute_role_begin,
    SglRoleEnd: StreamExecutor._execute_role_end,
    SglImage: StreamExecutor._execute_image,
    SglVideo: StreamExecutor._execute_video,
    SglVariable: StreamExecutor._execute_variable,
    SglVarScopeBegin: StreamExecutor._execute_var_scope_begin,
    SglVarScopeEnd: StreamExecutor._execute_var_scope_end,
    SglCommitLazy: StreamExecutor._execute_commit_lazy,
    SglConcateAndAppend: StreamExecutor._execute_concatenate_and_append,
    SglSeparateReasoning: StreamExecutor._execute_separate_reasoning,
}


class ProgramState:
    """The ``s`` of a program: append with ``+=``, read variables with ``s["name"]``."""

    def __init__(self, stream_executor: StreamExecutor) -> None:
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    # ---- roles ----
    def _role_common(self, name: str, expr: SglExpr | None = None):
        if expr is not None:
            self.stream_executor.submit(
                SglExprList([SglRoleBegin(name), expr, SglRoleEnd(name)]))
            return expr

        @contextmanager
        def role_scope():
            self.stream_executor.submit(SglRoleBegin(name))
            yield
            self.stream_executor.submit(SglRoleEnd(name))

        return role_scope()

    def system(self, expr: SglExpr | None = None):
        return self._role_common("system", expr)

    def user(self, expr: SglExpr | None = None):
        return self._role_common("user", expr)

    def assistant(self, expr: SglExpr | None = None):
        return self._role_common("assistant", expr)

    @contextmanager
    def var_scope(self, name: str):
        self.stream_executor.submit(SglVarScopeBegin(name))
        yield
        self.stream_executor.submit(SglVarScopeEnd(name))

    # ---- fork / copy ----
    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        children = self.stream_executor.fork(size, position_ids_offset)
        return ProgramStateGroup([ProgramState(child) for child in children], self)

    @contextmanager
    def copy(self, position_ids_offset: Any = None):
        group = self.fork(1, position_ids_offset)
        try:
            yield group[0]
        finally:
            group.join()

    # ---- reading ----
    def text(self) -> str:
        return self.stream_executor.text()

    def messages(self) -> list[dict]:
        return self.stream_executor.messages()

    def error(self) -> BaseException | None:
        return self.stream_executor.error()

    def sync(self) -> None:
        self.stream_executor.sync()

    def get_var(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> Any:
        return self.stream_executor.get_meta_info(name)

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Text deltas as they arrive (the whole program's, or one variable's)."""
        executor = self.stream_executor
        if not executor.stream:
            yield self.text() if var_name is None else self.get_var(var_name)
            return
        if var_name is None:
            yield from self._program_deltas()
            return
        yield from self._variable_deltas(var_name)

    def _program_deltas(self) -> Iterator[str]:
        executor, pos = self.stream_executor, 0
        while True:
            executor.stream_text_event.wait()
            executor.stream_text_event.clear()
            text = executor.text_
            if len(text) > pos:
                yield text[pos:]
                pos = len(text)
            if executor.is_finished:
                text = executor.text_
                if len(text) > pos:
                    yield text[pos:]
                break

    def _wait_for_stream_var(self, var_name: str) -> threading.Event | None:
        """The variable's stream event, once the body has submitted the node (None: never)."""
        executor = self.stream_executor
        while var_name not in executor.stream_var_event:
            if executor.is_finished:
                return None
            time.sleep(0.005)
        return executor.stream_var_event[var_name]

    def _variable_deltas(self, var_name: str) -> Iterator[str]:
        executor, pos = self.stream_executor, 0
        if self._wait_for_stream_var(var_name) is None:
            return
        while True:
            executor.stream_var_event[var_name].wait()
            executor.stream_var_event[var_name].clear()
            value = executor.variables.get(var_name, "")
            if isinstance(value, str) and len(value) > pos:
                yield value[pos:]
                pos = len(value)
            if executor.variable_event[var_name].is_set():
                value = executor.variables.get(var_name, "")
                if isinstance(value, str) and len(value) > pos:
                    yield value[pos:]
                break

    async def text_async_iter(self, var_name: str | None = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        """Like ``text_iter`` for asyncio; with meta data, yields ``(chunk, meta_info)``."""
        executor = self.stream_executor
        loop = asyncio.get_running_loop()
        if not executor.stream:
            value = await loop.run_in_executor(
                None, self.text if var_name is None else lambda: self.get_var(var_name))
            if return_meta_data:
                meta = None if var_name is None else executor.meta_info.get(var_name)
                yield value, meta
            else:
                yield value
            return
        if var_name is None:
            event, done = executor.stream_text_event, (lambda: executor.is_finished)

            def read() -> str:
                return executor.text_
        else:
            event = await loop.run_in_executor(None, self._wait_for_stream_var, var_name)
            if event is None:
                return

            def done() -> bool:
                return executor.variable_event[var_name].is_set()

            def read() -> str:
                value = executor.variables.get(var_name, "")
                return value if isinstance(value, str) else ""
        pos, pending = 0, _PendingLogprobs()
        while True:
            await loop.run_in_executor(None, event.wait)
            event.clear()
            finished = done()
            text = read()
            chunk, pos = text[pos:], len(text)
            meta = executor.meta_info.get(var_name) if var_name is not None else None
            if return_meta_data:
                merged = pending.merge(chunk, meta)
                if merged is not None:
                    yield merged
            elif chunk:
                yield chunk
            if finished:
                break

    # ---- appending ----
    def __iadd__(self, other: Any) -> ProgramState:
        if other is None:
            raise ValueError("Tried to append None to state.")
        self.stream_executor.submit(other)
        return self

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self.stream_executor.variables

    def __del__(self) -> None:
        try:
            self.stream_executor.end()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class _PendingLogprobs:
    """Carries the logprob lists of chunks with no text into the next chunk that has text."""

    KEYS = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")

    def __init__(self) -> None:
        self.held: dict[str, list] = {}

    def merge(self, chunk: str, meta: dict | None) -> tuple[str, dict | None] | None:
        if meta is None:
            return (chunk, meta) if chunk else None
        if not chunk:
            for key in self.KEYS:
                if meta.get(key):
                    self.held.setdefault(key, []).extend(meta[key])
            return None
        if self.held:
            meta = dict(meta)
            for key, values in self.held.items():
                meta[key] = values + list(meta.get(key) or [])
            self.held = {}
        return chunk, meta


class ProgramStateGroup:
    """The children of ``s.fork(n)``: index them, ``+=`` to all, ``join`` back."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState | None = None) -> None:
        self.states = states
        self.src_state = src_state

    def join(self, mode: str = "gather_variable") -> None:
        if mode == "gather_variable":
            self._join_gather_variables()
        elif mode == "concate_and_append":
            self.src_state += SglConcateAndAppend(self.states)
        else:
            raise ValueError(f"Invalid join mode: {mode}")
        for state in self.states:
            state.stream_executor.end()

    def _join_gather_variables(self) -> None:
        parent = self.src_state.stream_executor
        parent_names = set(parent.variables)
        for state in self.states:
            child = state.stream_executor
            child.sync()
            for name, value in child.variables.items():
                if name in parent_names:
                    continue
                current = parent.variables.get(name)
                if not isinstance(current, list):
                    parent.variables[name] = []
                parent.variables[name].append(value)

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        assert self.states[i] == value
        self.states[i] = value

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        if callable(other):
            for i, state in enumerate(self.states):
                state += other(i)
        elif isinstance(other, SglExpr):
            for state in self.states:
                state += other
        elif isinstance(other, (list, tuple)):
            for state, item in zip(self.states, other):
                state += item
        else:
            raise ValueError(f"Invalid value: {other!r}")
        return self
