"""The interpreter without a server: text, variables, roles, fork/join, errors, streaming."""

from __future__ import annotations

import asyncio

import pytest
import sglang as sgl
from scripted_backend import ScriptedBackend
from sglang.lang.interpreter import StreamExecutor
from sglang.lang.ir import SglGen, SglSamplingParams, SglSeparateReasoning


def test_gen_appends_text_and_sets_the_variable(backend: ScriptedBackend) -> None:
    @sgl.function
    def qa(s, question):
        s += "Q: " + question + "\nA:"
        s += sgl.gen("answer", 16, stop="\n", temperature=0)

    state = qa.run(question="why?", backend=backend)
    assert state["answer"] == "X"
    assert state.text() == "Q: why?\nA:X"
    params = backend.calls[0][1]
    assert params.max_new_tokens == 16 and params.stop == "\n" and params.temperature == 0
    assert state.get_meta_info("answer") == {"prompt": "Q: why?\nA:"}


def test_run_defaults_and_gen_overrides(backend: ScriptedBackend) -> None:
    @sgl.function
    def prog(s):
        s += sgl.gen("a")
        s += sgl.gen("b", max_tokens=3, top_k=5)

    prog.run(backend=backend, max_new_tokens=7, temperature=0.5).sync()
    a, b = backend.calls[0][1], backend.calls[1][1]
    assert (a.max_new_tokens, a.temperature, a.top_k) == (7, 0.5, -1)
    assert (b.max_new_tokens, b.temperature, b.top_k) == (3, 0.5, 5)


def test_template_stop_strings_are_added_to_every_gen() -> None:
    backend = ScriptedBackend("llama-3-instruct")

    @sgl.function
    def prog(s):
        s += sgl.gen("free", stop="\n")
        s += sgl.user("hi") + sgl.assistant(sgl.gen("x", stop=["a", "b"]))

    state = prog.run(backend=backend)
    state.sync()
    assert backend.calls[0][1].stop == ["\n", "<|eot_id|>"]
    assert backend.calls[1][1].stop == ["a", "b", "<|eot_id|>"]


def test_roles_render_with_the_template_and_messages() -> None:
    backend = ScriptedBackend("chatml")

    @sgl.function
    def chat(s):
        s += sgl.system("Be brief.")
        s += sgl.user("Hello")
        s += sgl.assistant(sgl.gen("reply"))
        with s.user():
            s += "Again"
        with s.assistant():
            s += sgl.gen("second")

    state = chat.run(backend=backend)
    assert state.text() == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                            "<|im_start|>user\nHello<|im_end|>\n"
                            "<|im_start|>assistant\nX<|im_end|>\n"
                            "<|im_start|>user\nAgain<|im_end|>\n"
                            "<|im_start|>assistant\nX<|im_end|>\n")
    assert state.messages() == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "X"}, {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "X"}]


def test_default_system_prompt_is_inserted_before_the_first_turn() -> None:
    backend = ScriptedBackend("qwen")

    @sgl.function
    def chat(s):
        s += sgl.user("Hi")

    state = chat.run(backend=backend)
    assert state.messages()[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert state.text().startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_llama2_style_folds_the_system_prompt_into_the_first_user_turn() -> None:
    backend = ScriptedBackend("llama-2-chat")

    @sgl.function
    def chat(s):
        s += sgl.system("SYS") + sgl.user("U1") + sgl.assistant("A1") + sgl.user("U2")

    assert chat.run(backend=backend).text() == (
        "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST]A1 </s><s>[INST] U2 [/INST]")


def test_begin_end_forms_and_nested_roles_fail(backend: ScriptedBackend) -> None:
    @sgl.function
    def ok(s):
        s += sgl.user_begin() + "hi" + sgl.user_end()
        s += sgl.assistant_begin()
        s += sgl.gen("a")
        s += sgl.assistant_end()

    state = ok.run(backend=backend)
    assert state.text() == "USER:hi\nASSISTANT:X\n"

    @sgl.function
    def nested(s):
        s += sgl.user_begin()
        s += sgl.assistant_begin()

    with pytest.warns(UserWarning, match="Error in stream_executor"):
        bad = nested.run(backend=backend)
        assert isinstance(bad.error(), AssertionError)


def test_select_and_gen_with_choices(backend: ScriptedBackend) -> None:
    @sgl.function
    def prog(s):
        s += "Pick: " + sgl.select("pick", choices=["a", "b"])
        s += sgl.gen("g", choices=["c", "d"])

    state = prog.run(backend=backend)
    assert state["pick"] == "b" and state["g"] == "d"
    assert state.text() == "Pick: bd"


def test_var_scope_captures_the_text_inside(backend: ScriptedBackend) -> None:
    @sgl.function
    def prog(s):
        s += "before "
        with s.var_scope("inner"):
            s += "in " + sgl.gen("x")
        s += " after"

    state = prog.run(backend=backend)
    assert state["inner"] == "in X"
    assert state.text() == "before in X after"


def test_fork_and_join_gather_variables_in_order() -> None:
    backend = ScriptedBackend(reply=lambda prompt, params: prompt[-1])

    @sgl.function
    def prog(s):
        s += "Tips:"
        forks = s.fork(3)
        forks += lambda i: f"{i}"
        forks += sgl.gen("tip", 4)
        forks.join()
        s += "done"

    state = prog.run(backend=backend)
    assert state["tip"] == ["0", "1", "2"]
    assert state.text() == "Tips:done"  # the children's text is not merged back


def test_fork_concate_and_append_merges_text() -> None:
    backend = ScriptedBackend()

    @sgl.function
    def prog(s):
        s += "Docs:"
        forks = s.fork(2)
        forks += [" one", " two"]
        forks.join(mode="concate_and_append")
        s += " end"

    assert prog.run(backend=backend).text() == "Docs: one two end"


def test_copy_gathers_into_lists(backend: ScriptedBackend) -> None:
    @sgl.function
    def prog(s):
        with s.copy() as c:
            c += sgl.gen("x")

    state = prog.run(backend=backend)
    state.sync()
    assert state["x"] == ["X"]


def test_errors() -> None:
    with pytest.raises(AssertionError, match='first argument must be "s"'):
        sgl.function(lambda t: None)

    backend = ScriptedBackend()

    @sgl.function
    def appends_none(s):
        s += None

    with pytest.raises(ValueError, match="append None"):
        appends_none.run(backend=backend)

    @sgl.function
    def two(s, a, b):
        s += a + b

    with pytest.raises(Exception, match="mismatch the SGL function signature"):
        two.run_batch([("only one",)], backend=backend)

    def boom(prompt, params):
        raise RuntimeError("backend down")

    @sgl.function
    def failing(s):
        s += sgl.gen("x")
        s += sgl.gen("y")

    with pytest.warns(UserWarning):
        state = failing.run(backend=ScriptedBackend(reply=boom))
        assert isinstance(state.error(), RuntimeError)
        with pytest.raises(KeyError):
            state["y"]
    with pytest.raises(KeyError):
        failing.run(backend=backend)["never"]


def test_run_batch_keeps_input_order_and_caches_the_prefix() -> None:
    backend = ScriptedBackend(reply=lambda prompt, params: prompt.split("#")[-1])

    @sgl.function
    def prog(s, i):
        s += "A long shared instruction prefix that is more than sixty-four characters. #"
        s += str(i)
        s += sgl.gen("echo")

    states = prog.run_batch([{"i": i} for i in range(16)], backend=backend, num_threads=4,
                            progress_bar=True)
    assert [s["echo"] for s in states] == [str(i) for i in range(16)]
    assert backend.cached == [
        "A long shared instruction prefix that is more than sixty-four characters. #"]
    assert prog.run_batch([], backend=backend) == []
    generated = list(prog.run_batch([(i,) for i in range(5)], backend=backend,
                                    generator_style=True))
    assert [s["echo"] for s in generated] == ["0", "1", "2", "3", "4"]


def test_bind_and_call(backend: ScriptedBackend) -> None:
    @sgl.function
    def prog(s, a, b):
        s += a + b

    bound = prog.bind(a="x")
    assert bound(b="y", backend=backend).text() == "xy"
    with pytest.raises(AssertionError):
        prog.bind(c=1)


def test_streaming_text_iter_and_variable_iter() -> None:
    backend = ScriptedBackend(reply=lambda prompt, params: "hello world")

    @sgl.function
    def prog(s):
        s += "Say:"
        s += sgl.gen("answer")

    state = prog.run(backend=backend, stream=True)
    assert "".join(state.text_iter()) == "Say:hello world"
    state = prog.run(backend=backend, stream=True)
    pieces = list(state.text_iter("answer"))
    assert "".join(pieces) == "hello world" and len(pieces) > 1

    async def collect():
        state = prog.run(backend=backend, stream=True)
        return [item async for item in state.text_async_iter("answer", return_meta_data=True)]

    items = asyncio.run(collect())
    assert "".join(chunk for chunk, _ in items) == "hello world"
    assert all(meta is not None for _, meta in items)


def test_separate_reasoning_names_and_execution(monkeypatch) -> None:
    expr = sgl.separate_reasoning(sgl.gen("test_var"), model_type="deepseek-r1")
    node = expr.expr_list[1]
    assert isinstance(node, SglSeparateReasoning)
    assert repr(node) == ("SeparateReasoning(model_type=deepseek-r1, "
                          "name=test_var_reasoning_content)")
    with pytest.raises(ValueError, match="name must be provided"):
        sgl.separate_reasoning(sgl.gen(), model_type="qwen3")

    class FakeParser:
        def __init__(self, model_type):
            self.model_type = model_type

        def parse_non_stream(self, text):
            return f"R:{text}", f"N:{text}"

    import sglang.srt.parser.reasoning_parser as rp
    monkeypatch.setattr(rp, "ReasoningParser", FakeParser)
    executor = StreamExecutor(backend=ScriptedBackend(), arguments={},
                              default_sampling_para=SglSamplingParams(), chat_template=None,
                              stream=False, use_thread=False)
    executor.variables = {"test_var": "content"}
    executor.cur_role, executor.cur_role_begin_pos, executor.text_ = "assistant", 0, "content"
    executor._execute_separate_reasoning(SglSeparateReasoning("deepseek-r1", SglGen("test_var")))
    assert executor.variables["test_var"] == "N:content"
    assert executor.variables["test_var_reasoning_content"] == "R:content"
    assert executor.variable_event["test_var_reasoning_content"].is_set()
    assert executor.text_ == "N:content"


def test_api_speculative_execution_on_a_completion_backend() -> None:
    backend = ScriptedBackend(reply=lambda prompt, params: "Paris\nCountry:France\nrest")

    @sgl.function(num_api_spec_tokens=64)
    def prog(s):
        s += "City:" + sgl.gen("city", stop="\n") + "\nCountry:" + sgl.gen("country", stop="\n")

    state = prog.run(backend=backend)
    assert state["city"] == "Paris" and state["country"] == "France"
    assert len(backend.calls) == 1  # the second gen was served from the speculated text


def test_separate_reasoning_with_the_servers_parser() -> None:
    """The real ReasoningParser (sglang.srt.parser, no torch) splits a gen inside a role."""
    backend = ScriptedBackend("chatml", reply=lambda prompt, params: "plan it</think>The answer")

    @sgl.function
    def prog(s):
        s += sgl.user("Q?")
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer"), model_type="deepseek-r1"))

    state = prog.run(backend=backend)
    assert state["answer"] == "The answer"
    assert state["answer_reasoning_content"] == "plan it"
    assert state.messages()[-1] == {"role": "assistant", "content": "The answer"}
