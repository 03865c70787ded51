"""Tracing: run a program body on placeholder arguments and record the nodes it appends.

``extract_prefix_by_tracing`` stops at the first node that is not constant text (a gen, an
argument, a fork): what came before is the program's constant prefix, which ``run_batch`` caches
once before running the batch. ``trace_program`` records the whole program (``SglFunction.trace``).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sglang.lang.interpreter import ProgramState, ProgramStateGroup
from sglang.lang.ir import (
    SglArgument,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglFork,
    SglGen,
    SglGetForkItem,
    SglRoleBegin,
    SglRoleEnd,
    SglSelect,
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
)


class StopTracing(Exception):
    """Raised inside a prefix trace at the first node that is not constant text."""


def _placeholders(program, given: dict[str, Any]) -> dict[str, Any]:
    arguments = {name: SglArgument(name, None) for name in program.arg_names
                 if name not in given}
    return {**given, **arguments, **program.bind_arguments}


def extract_prefix_by_tracing(program, backend) -> str:
    """The constant text a program starts with (role prefixes and system prompt included)."""
    arguments = _placeholders(program, {})
    tracer = TracerProgramState(backend, arguments, only_trace_prefix=True)
    try:
        with TracingScope(tracer):
            tracer.ret_value = program.func(tracer, **arguments)
    except (StopTracing, TypeError, AttributeError):
        pass  # the body used an argument's value or a construct tracing cannot follow
    prefix = ""
    for node in tracer.flatten_nodes():
        if not isinstance(node, SglConstantText):
            break
        prefix += node.value
    return prefix


def trace_program(program, arguments: dict[str, Any], backend) -> TracerProgramState:
    arguments = _placeholders(program, dict(arguments))
    tracer = TracerProgramState(backend, arguments, only_trace_prefix=False)
    with TracingScope(tracer):
        tracer.ret_value = program.func(tracer, **arguments)
    return tracer


class TracerProgramState(ProgramState):
    """A ``ProgramState`` that records nodes instead of running them."""

    def __init__(self, backend, arguments: dict[str, Any], only_trace_prefix: bool) -> None:
        self.pid = uuid.uuid4().hex
        self.backend = backend.endpoint if hasattr(backend, "endpoint") else backend
        self.arguments = arguments
        self.only_trace_prefix = only_trace_prefix
        self.nodes: list[SglExpr] = []
        self.last_node: SglExpr | None = None
        self.variables: dict[str, Any] = {}
        self.ret_value: Any = None
        self.messages_: list[dict] = []
        self.cur_role: str | None = None
        self.chat_template = self.backend.get_chat_template()
        self.child_states: list[TracerProgramState] = []
        scope = TracingScope.get_current_scope()
        if scope is not None:
            scope.add_child_state(self)

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        assert size >= 1
        if self.only_trace_prefix:
            raise StopTracing()
        fork_node = SglFork(size)
        fork_node.prev_node = self.last_node
        states = [TracerProgramState(self.backend, self.arguments, self.only_trace_prefix)
                  for _ in range(size)]
        for i, state in enumerate(states):
            item = SglGetForkItem(i)
            item.prev_node = fork_node
            state.last_node = item
            state.variables = dict(self.variables)
            state.messages_ = list(self.messages_)
            state.cur_role = self.cur_role
            state.chat_template = self.chat_template
        return ProgramStateGroup(states, self)

    def __iadd__(self, other: Any) -> TracerProgramState:
        if other is None:
            raise ValueError("Tried to append None to state.")
        self._trace(other)
        return self

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def get_var(self, name: str) -> Any:
        value = self.arguments.get(name)
        if value is not None:
            return value
        variable = self.variables[name]
        return SglVariable(variable.name, variable.source)

    def flatten_nodes(self) -> list[SglExpr]:
        flat: list[SglExpr] = []

        def visit(node: SglExpr) -> None:
            if isinstance(node, SglExprList):
                for child in node.expr_list:
                    visit(child)
            else:
                flat.append(node)

        for node in self.nodes:
            visit(node)
        return flat

    def __del__(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"TracerProgramState(nodes={len(self.nodes)})"

    # ---- recording ----
    def _trace(self, other: Any) -> None:
        if isinstance(other, str):
            other = SglConstantText(other)
        assert isinstance(other, SglExpr), f"cannot append {type(other).__name__} to a program"
        other.pid = self.pid
        if isinstance(other, SglConstantText):
            self._append_node(other)
        elif isinstance(other, (SglGen, SglSelect)):
            kind = "gen_" if isinstance(other, SglGen) else "select_"
            name = other.name if other.name is not None else kind + str(len(self.variables))
            self.variables[name] = SglVariable(name, source=other)
            self._append_node(other)
        elif isinstance(other, SglExprList):
            for item in other.expr_list:
                self._trace(item)
        elif isinstance(other, SglRoleBegin):
            self._trace_role_begin(other)
        elif isinstance(other, SglRoleEnd):
            _, suffix = self.chat_template.get_prefix_and_suffix(other.role, self.messages_)
            self._append_node(SglConstantText(suffix))
            self.messages_.append({"role": other.role, "content": ""})
            self.cur_role = None
        elif isinstance(other, SglVarScopeBegin):
            pass
        elif isinstance(other, SglVarScopeEnd):
            self.variables[other.name] = SglVariable(other.name, source=self.last_node)
        elif self.only_trace_prefix:
            raise StopTracing()
        else:
            self._append_node(other)

    def _trace_role_begin(self, expr: SglRoleBegin) -> None:
        assert self.cur_role is None, "Nested roles are not allowed."
        default_system = self.chat_template.default_system_prompt
        if not self.messages_ and expr.role != "system" and default_system:
            self._trace_role_begin(SglRoleBegin("system"))
            self._append_node(SglConstantText(default_system))
            self._trace(SglRoleEnd("system"))
        self.cur_role = expr.role
        prefix, _ = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self._append_node(SglConstantText(prefix))

    def _append_node(self, node: SglExpr) -> None:
        self.nodes.append(node)
        node.prev_node = self.last_node
        self.last_node = node


class TracingScope:
    """The tracer a thread is tracing with (nested programs called inside it trace too)."""

    _local = threading.local()

    def __init__(self, tracer_state: TracerProgramState) -> None:
        self.tracer_state = tracer_state
        self.last_scope: TracingScope | None = None

    def __enter__(self) -> TracingScope:
        self.last_scope = TracingScope.get_current_scope()
        TracingScope._local.scope = self
        return self

    def __exit__(self, *exc: object) -> None:
        TracingScope._local.scope = self.last_scope

    @staticmethod
    def get_current_scope() -> TracingScope | None:
        return getattr(TracingScope._local, "scope", None)

    def add_child_state(self, state: TracerProgramState) -> None:
        scope: TracingScope | None = self
        while scope is not None:
            scope.tracer_state.child_states.append(state)
            scope = scope.last_scope
