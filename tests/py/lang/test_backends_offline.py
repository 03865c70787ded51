"""Backends without a server: the OpenAI backend's select and typed gens on a fake client,
and the optional backends' import errors."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

import sglang as sgl

pytest.importorskip("openai")  # a test dependency; the backend itself is an optional extra
from sglang.lang.backend.openai import OpenAI  # noqa: E402


class FakeTokenizer:
    """Words are tokens: 'red' -> [1], 'reddish' -> [1, 2], ... (n_vocab 10, eot 9)."""

    vocab = {"red": 1, "dish": 2, "blue": 3, " ": 4, "7": 5, "42": 6}
    n_vocab = 10
    eot_token = 9

    def encode(self, text: str) -> list[int]:
        ids, rest = [], text
        while rest:
            for word, i in sorted(self.vocab.items(), key=lambda kv: -len(kv[0])):
                if rest.startswith(word):
                    ids.append(i)
                    rest = rest[len(word):]
                    break
            else:
                ids.append(0)
                rest = rest[1:]
        return ids

    def decode(self, ids: list[int]) -> str:
        inverse = {i: w for w, i in self.vocab.items()}
        return "".join(inverse.get(i, "?") for i in ids)


class FakeCompletions:
    """Answers the highest-biased token; records every call."""

    def __init__(self, tokenizer: FakeTokenizer, text: str = "") -> None:
        self.tokenizer, self.text, self.calls = tokenizer, text, []

    def create(self, **kwargs):
        self.calls.append(kwargs)
        bias = kwargs.get("logit_bias") or {}
        if bias and kwargs.get("max_tokens") == 1:
            text = self.tokenizer.decode([int(max(bias, key=lambda k: (bias[k], -int(k))))])
        else:
            text = self.text
        return SimpleNamespace(choices=[SimpleNamespace(text=text)],
                               usage=SimpleNamespace(prompt_tokens=3, completion_tokens=1))


def completion_backend(text: str = "") -> OpenAI:
    backend = OpenAI("gpt-3.5-turbo-instruct", api_key="x", base_url="http://127.0.0.1:9/v1")
    assert not backend.is_chat_model
    backend._tokenizer = FakeTokenizer()
    backend.client = SimpleNamespace(completions=FakeCompletions(backend._tokenizer, text))
    return backend


def test_select_probes_token_by_token_with_logit_bias() -> None:
    backend = completion_backend()

    @sgl.function
    def pick(s):
        s += "Colour:" + sgl.select("c", ["reddish", "blue"])

    state = pick.run(backend=backend)
    assert state["c"] in ("reddish", "blue")
    calls = backend.client.completions.calls
    assert calls[0]["max_tokens"] == 1 and set(calls[0]["logit_bias"]) == {"1", "3"}
    assert state.get_meta_info("c") == {"scores": [1, 0]} and state["c"] == "reddish"


def test_typed_gens_on_a_completion_model() -> None:
    backend = completion_backend(text="42")

    @sgl.function
    def typed(s):
        s += "n=" + sgl.gen_int("n") + " s=" + sgl.gen_string("s")

    state = typed.run(backend=backend)
    assert state["n"] == "42" and state["s"] == '"42"'
    int_call, str_call = backend.client.completions.calls
    assert int_call["stop"] == [" "] and int_call["logit_bias"]["9"] == 100
    assert set(int_call["logit_bias"]) == {"4", "5", "6", "9"}  # digits, spaces, end of text
    assert str_call["stop"] == '"' and str_call["prompt"].endswith('"')

    @sgl.function
    def floats(s):
        s += sgl.gen("f", dtype=float)

    with pytest.warns(UserWarning):
        assert isinstance(floats.run(backend=backend).error(), ValueError)


def test_chat_models_refuse_select() -> None:
    backend = OpenAI("gpt-4o", api_key="x", base_url="http://127.0.0.1:9/v1")

    @sgl.function
    def pick(s):
        s += sgl.user("Pick") + sgl.assistant(sgl.select("c", ["a", "b"]))

    with pytest.warns(UserWarning):
        assert isinstance(pick.run(backend=backend).error(), NotImplementedError)


@pytest.mark.parametrize("name,module,extra", [
    ("LiteLLM", "litellm", "sglang[litellm]"),
    ("VertexAI", "vertexai", "sglang[vertexai]"),
])
def test_optional_backends_name_their_extra(monkeypatch, name: str, module: str,
                                            extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    monkeypatch.delitem(sys.modules, f"sglang.lang.backend.{module}", raising=False)
    proxy = sgl.__dict__[name]
    monkeypatch.setattr(proxy, "_module", None)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        proxy("some-model")
