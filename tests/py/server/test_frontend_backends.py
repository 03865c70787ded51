"""The frontend's OpenAI and Anthropic backends against this server's own /v1 routes
(issue 11, acceptance 3): one program, the same greedy text through every backend."""

from __future__ import annotations

import pytest

import sglang as sgl

MODEL = "smollm2-135m-instruct"


@sgl.function
def chat(s, question):
    s += sgl.system("You are terse.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16, temperature=0))


@pytest.fixture(scope="module")
def backends(server: str) -> dict[str, object]:
    return {
        "runtime": sgl.RuntimeEndpoint(server),
        "openai": sgl.OpenAI(MODEL, base_url=f"{server}/v1", api_key="x"),
        "anthropic": sgl.Anthropic(MODEL, base_url=server, api_key="x"),
    }


def test_same_greedy_text_through_every_backend(backends) -> None:
    answers = {name: chat.run(question="Name a color.", backend=b)["answer"]
               for name, b in backends.items()}
    assert answers["runtime"], answers
    assert answers["openai"] == answers["runtime"] == answers["anthropic"], answers
    usage = backends["openai"].token_usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_streaming_joins_to_the_same_text(backends, name: str) -> None:
    whole = chat.run(question="Name a fruit.", backend=backends[name])["answer"]
    state = chat.run(question="Name a fruit.", backend=backends[name], stream=True)
    assert "".join(state.text_iter("answer")) == whole


def test_openai_completion_model_gets_the_text(server: str) -> None:
    backend = sgl.OpenAI(MODEL, is_chat_model=False, base_url=f"{server}/v1", api_key="x")

    @sgl.function
    def few_shot(s):
        s += "Q: 1+1?\nA: 2\nQ: 2+2?\nA:" + sgl.gen("answer", max_tokens=8, stop="\n",
                                                     temperature=0)

    runtime = few_shot.run(backend=sgl.RuntimeEndpoint(server))["answer"]
    assert few_shot.run(backend=backend)["answer"] == runtime


def test_chat_gen_must_follow_the_assistant_role(backends) -> None:
    @sgl.function
    def free_text(s):
        s += "Hello" + sgl.gen("x", max_tokens=4)

    with pytest.warns(UserWarning):
        error = free_text.run(backend=backends["openai"]).error()
    assert isinstance(error, RuntimeError) and "sgl.assistant" in str(error)


def test_chat_speculative_execution_fills_a_turn_with_one_call(backends) -> None:
    backend = backends["openai"]

    @sgl.function(num_api_spec_tokens=32)
    def character(s):
        s += sgl.user("Describe a person as 'Name: ...' then 'Job: ...' lines.")
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n") + "\nJob:"
                           + sgl.gen("job", stop="\n"))

    backend.token_usage.reset()
    state = character.run(backend=backend, temperature=0)
    state.sync()
    assert state.error() is None
    assert isinstance(state["name"], str) and isinstance(state["job"], str)
    assert state.messages()[-1]["role"] == "assistant"
    assert state.messages()[-1]["content"].startswith("Name:")
    # 1 to 3 calls (retried while the reply does not fit the pattern), never one per gen more
    assert backend.token_usage.completion_tokens <= 3 * 32


def test_runtime_starts_and_stops_a_server_with_an_api_key() -> None:
    """sgl.Runtime launches this project's server (flags from keywords); its endpoint sends the
    key; a client without it is refused."""
    from server_utils import DEMO_MODEL

    runtime = sgl.Runtime(model_path=DEMO_MODEL, api_key="secret", max_total_tokens=4096,
                          random_seed=1, skip_server_warmup=True)
    try:
        assert runtime.endpoint.api_key == "secret"
        state = chat.run(question="Name a color.", backend=runtime)  # unwrapped to .endpoint
        assert state.error() is None and state["answer"]
        with pytest.raises(RuntimeError):
            sgl.RuntimeEndpoint(runtime.url)  # no key: 401
    finally:
        runtime.shutdown()
    assert runtime.process is None
