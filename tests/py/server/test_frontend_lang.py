"""The frontend language against this project's server on the demo model (issue 11, acceptance 2).

Programs from ``sglang.test.test_programs`` run where their checks are about formats; the rest
are checked for what a 135M model can do (formats, parsing, ordering, lengths), not knowledge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import requests
import sglang as sgl
from sglang.lang.ir import REGEX_FLOAT, REGEX_INT, REGEX_STR
from sglang.test import test_programs


@pytest.fixture(scope="module")
def endpoint(server: str) -> Iterator[sgl.RuntimeEndpoint]:
    backend = sgl.RuntimeEndpoint(server)
    sgl.set_default_backend(backend)
    yield backend
    sgl.set_default_backend(None)


def test_endpoint_reads_the_model_and_its_template(endpoint: sgl.RuntimeEndpoint) -> None:
    assert endpoint.get_model_name() == "smollm2-135m-instruct"
    assert endpoint.chat_template.name == "smollm"
    assert endpoint.get_server_info()["status"] == "ready"
    assert sgl.get_server_info()["status"] == "ready"
    assert sgl.flush_cache() is None


def test_few_shot_qa_with_stop(endpoint) -> None:
    @sgl.function
    def few_shot_qa(s, question):
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: What is the capital of Germany?\nA: Berlin\n"
        s += "Q: " + question + "\nA:" + sgl.gen("answer", 16, stop="\n", temperature=0)

    state = few_shot_qa.run(question="What is the capital of Italy?")
    answer = state["answer"]
    assert answer and "\n" not in answer
    assert state.text().endswith("A:" + answer)
    meta = state.get_meta_info("answer")
    assert meta["finish_reason"]["type"] in ("stop", "length") and meta["completion_tokens"] > 0


def test_multi_turn_chat_with_roles(endpoint) -> None:
    test_programs.test_mt_bench()

    @sgl.function
    def chat(s):
        s += sgl.user("Say hello.")
        s += sgl.assistant(sgl.gen("reply", max_tokens=16, temperature=0))

    state = chat.run()
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert state.text().startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert "<|im_end|>" not in state["reply"]  # the template's stop string ended the turn


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized])
def test_select_with_each_choice_method(endpoint, method) -> None:
    @sgl.function
    def pick(s):
        s += "Is the sky blue? Answer:" + sgl.select(
            "answer", ["Yes", "No", "Maybe not"], choices_method=method)

    state = pick.run()
    assert state["answer"] in ("Yes", "No", "Maybe not")
    meta = state.get_meta_info("answer")
    assert len(meta["input_token_logprobs"]) == 3
    assert all(isinstance(lp[0], float) for lps in meta["input_token_logprobs"] for lp in lps)
    if method is sgl.unconditional_likelihood_normalized:
        assert len(meta["normalized_unconditional_prompt_logprobs"]) == 3


def test_select_scores_are_the_servers_prompt_logprobs(endpoint, server: str) -> None:
    """The prefill-only requests of select return the prompt logprobs from logprob_start_len."""
    reply = requests.post(f"{server}/generate", json={
        "text": ["Hello world", "Hello there"], "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True, "return_text_in_logprobs": True, "logprob_start_len": 0},
        timeout=60).json()
    for item in reply:
        lps = item["meta_info"]["input_token_logprobs"]
        assert len(lps) == item["meta_info"]["prompt_tokens"] and lps[0][0] is None
        assert all(isinstance(x[0], float) for x in lps[1:]) and lps[1][2] is not None
        assert item["meta_info"]["completion_tokens"] == 0


def test_typed_gens_parse(endpoint) -> None:
    """gen_int / gen_string / dtype gens (as in test_programs.test_dtype_gen and
    test_decode_json, with short outputs): every value parses as its type."""

    @sgl.function
    def typed(s):
        s += "Q: What is the full name of DNS?\nA: " + sgl.gen("str_res", 12, dtype=str) + "\n"
        s += "Q: Which year was DNS invented?\nA: " + sgl.gen("int_res", 8, dtype=int) + "\n"
        s += "Q: What is the value of pi?\nA: " + sgl.gen("float_res", 8, dtype=float) + "\n"
        s += "Q: Is the sky blue?\nA: " + sgl.gen("bool_res", 4, dtype=bool) + "\n"
        with s.var_scope("json_output"):
            s += '{\n  "name": ' + sgl.gen_string(max_tokens=12) + ",\n"
            s += '  "population": ' + sgl.gen_int(max_tokens=8) + "\n}"

    state = typed.run(temperature=0)
    assert re.fullmatch(r'"[\w\d\s]*"', state["str_res"]), state["str_res"]
    int(state["int_res"])
    float(state["float_res"])
    assert state["bool_res"] in ("True", "False")
    json.loads(state["json_output"])


def test_json_via_regex_and_json_schema(endpoint) -> None:
    @sgl.function
    def regex_json(s):
        s += "The city of Paris as JSON:\n"
        with s.var_scope("json_output"):
            s += '{\n  "name": ' + sgl.gen(regex=REGEX_STR, max_tokens=12, stop=[" ", "\n"])
            s += ',\n  "population": ' + sgl.gen(regex=REGEX_INT, max_tokens=8,
                                                 stop=[" ", "\n"])
            s += ',\n  "latitude": ' + sgl.gen(regex=REGEX_FLOAT, max_tokens=8,
                                               stop=[" ", "\n"]) + "\n}"

    obj = json.loads(regex_json.run(temperature=0)["json_output"])
    assert isinstance(obj["name"], str) and isinstance(obj["population"], int)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}

    @sgl.function
    def character(s):
        s += "A character as JSON: " + sgl.gen("json", max_tokens=48, temperature=0,
                                                json_schema=json.dumps(schema))

    obj = json.loads(character.run()["json"])
    assert set(obj) == {"name", "age"} and isinstance(obj["age"], int)


def test_ipv4_regex(endpoint) -> None:
    test_programs.test_regex()


def test_streaming(endpoint) -> None:
    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=24, temperature=0))

    whole = qa.run(question="Tell me a story.")
    streamed = qa.run(question="Tell me a story.", stream=True)
    pieces = list(streamed.text_iter("answer"))
    assert len(pieces) > 1 and "".join(pieces) == whole["answer"]
    program = "".join(qa.run(question="Tell me a story.", stream=True).text_iter())
    assert program == whole.text()
    test_programs.test_stream_logprobs()


def test_parallel_decoding_with_fork(endpoint) -> None:
    @sgl.function
    def tips(s, topic):
        s += "Give tips for " + topic + ".\n"
        forks = s.fork(3)
        for i in range(3):
            forks[i] += f"Tip {i + 1}:" + sgl.gen("tip", 12, stop="\n", temperature=0)
        forks.join()
        for i in range(3):
            s += f"Tip {i + 1}:" + forks[i]["tip"] + "\n"

    state = tips.run(topic="sleep")
    assert isinstance(state["tip"], list) and len(state["tip"]) == 3
    for i in range(3):
        assert f"Tip {i + 1}:" + state["tip"][i] + "\n" in state.text()


def test_tool_use_with_stop(endpoint) -> None:
    @sgl.function
    def tool_use(s):
        s += "calculate(1+2)=3\ncalculate(3*4)=12\ncalculate(" + sgl.gen(
            "expression", 16, stop=")", temperature=0, regex=r"[0-9]+[+*][0-9]+\)?")
        s += ")="
        with s.var_scope("answer"):
            s += str(eval(s["expression"]))

    state = tool_use.run()
    assert re.fullmatch(r"[0-9]+[+*][0-9]+", state["expression"])
    assert state["answer"] == str(eval(state["expression"]))


def test_react_style_loop_of_selects(endpoint) -> None:
    @sgl.function
    def react(s):
        s += "Solve the task step by step.\n"
        for i in range(1, 4):
            s += f"Action {i}: " + sgl.select(f"action_{i}", ["Search", "Finish"])
            if s[f"action_{i}"] == "Search":
                s += " [" + sgl.gen(f"query_{i}", 8, stop="]", temperature=0) + "]\n"
            else:
                s += " [" + sgl.gen("answer", 8, stop="]", temperature=0) + "]\n"
                break

    state = react.run()
    actions = [state[f"action_{i}"] for i in range(1, 4) if f"action_{i}" in state]
    assert actions and set(actions) <= {"Search", "Finish"}


def test_min_tokens(endpoint) -> None:
    @sgl.function
    def short(s):
        s += sgl.user("Say OK.")
        s += sgl.assistant(sgl.gen("answer", min_tokens=24, max_tokens=32, temperature=0))

    meta = short.run().get_meta_info("answer")
    assert meta["completion_tokens"] >= 24


def test_run_batch_in_order_with_a_progress_bar(endpoint, capsys) -> None:
    @sgl.function
    def echo(s, i):
        s += f"Repeat the number {i}: " + sgl.gen("n", 6, temperature=0, regex=r"[0-9]+")

    states = echo.run_batch([{"i": i} for i in range(16)], progress_bar=True)
    assert len(states) == 16
    assert all(s.text().startswith(f"Repeat the number {i}: ") for i, s in enumerate(states))
    assert "16/16" in capsys.readouterr().err


def test_a_server_error_is_the_programs_error(endpoint) -> None:
    @sgl.function
    def bad(s):
        s += "x" + sgl.gen("y", max_tokens=8, temperature=-1)

    with pytest.warns(UserWarning):
        state = bad.run()
        error = state.error()
    assert isinstance(error, RuntimeError) and "temperature" in str(error)


def test_an_image_goes_to_the_server_as_image_data(endpoint) -> None:
    """sgl.image is sent as image_data, which this text-only model refuses (images on a
    vision-language model: test_vlm_apis.py)."""

    @sgl.function
    def look(s):
        s += sgl.user(sgl.image(b"\x89PNG not really") + "What is this?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=4))

    with pytest.warns(UserWarning):
        error = look.run().error()
    assert isinstance(error, RuntimeError) and "image_data" in str(error)
    assert "does not take images" in str(error)
