"""Constrained decoding through /generate on the demo model: JSON schema (validated with
jsonschema), regex, EBNF and structural tags, with both grammar backends (xgrammar: the session
server; outlines: a server started here), with n > 1, streaming, logprobs and stop strings, and the
400s for invalid grammars."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import jsonschema
import pytest
import requests
from server_utils import DEMO_MODEL, SERVER_ARGS, server_state, serving

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
# SGLang docs' capital schema; the population is bounded (maximum for xgrammar, maxDigits for
# outlines' regex builder) because a 135M model at temperature 0 repeats digits forever.
CAPITAL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[\\w]+$"},
        "population": {"type": "integer", "maximum": 99999999, "maxDigits": 8},
    },
    "required": ["name", "population"],
}
COUNTRIES = ["France", "Germany", "Italy", "Spain", "Japan", "Canada", "Brazil", "Egypt",
             "Kenya", "India", "China", "Peru", "Chile", "Norway", "Sweden", "Poland", "Greece",
             "Turkey", "Mexico", "Australia"]
IPV4 = r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
GREETINGS = 'root ::= "Hello" | "Hi" | "Hey"'
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string",
                                                            "pattern": "^[A-Za-z ]{1,30}$"}},
                  "required": ["city"]}


@pytest.fixture(scope="module")
def outlines_server() -> Iterator[str]:
    with serving(DEMO_MODEL, [*SERVER_ARGS, "--grammar-backend", "outlines"]) as url:
        yield url


@pytest.fixture(params=["xgrammar", "outlines"])
def backend_url(request: pytest.FixtureRequest) -> str:
    name = "server" if request.param == "xgrammar" else "outlines_server"
    return request.getfixturevalue(name)


def post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/generate", json=body, timeout=600)


def ok(url: str, body: dict) -> dict | list:
    r = post(url, body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_json_schema_output_validates(backend_url: str, temperature: float) -> None:
    prompts = [CHAT.format(f"Give the capital of {c} and its population as JSON.")
               for c in COUNTRIES]
    out = ok(backend_url, {"text": prompts, "sampling_params": {
        "temperature": temperature, "max_new_tokens": 64, "sampling_seed": 3,
        "json_schema": json.dumps(CAPITAL_SCHEMA)}})
    assert len(out) == 20
    for o in out:
        assert o["meta_info"]["finish_reason"]["type"] == "stop", o
        jsonschema.validate(json.loads(o["text"]), CAPITAL_SCHEMA)


def test_regex_choice(backend_url: str) -> None:
    prompts = [CHAT.format(q) for q in ("What is the capital of France?",
                                        "Which country is London in?", "Name a country.")]
    for temperature in (0.0, 1.0):
        out = ok(backend_url, {"text": prompts, "sampling_params": {
            "temperature": temperature, "max_new_tokens": 16, "regex": "(France|England)"}})
        assert {o["text"] for o in out} <= {"France", "England"}


def test_ipv4_regex(backend_url: str) -> None:
    out = ok(backend_url, {"text": [CHAT.format("Give me an IP address.")] * 4, "sampling_params":
                           {"temperature": 0.8, "max_new_tokens": 32, "regex": IPV4}})
    for o in out:
        assert re.fullmatch(IPV4, o["text"]), o["text"]


def test_ebnf_greeting(server: str) -> None:
    out = ok(server, {"text": [CHAT.format("Greet me."), CHAT.format("Say something.")],
                      "sampling_params": {"temperature": 0.8, "max_new_tokens": 16,
                                          "ebnf": GREETINGS}})
    assert {o["text"] for o in out} <= {"Hello", "Hi", "Hey"}


def test_structural_tag(server: str) -> None:
    tag = {"type": "structural_tag", "format": {
        "type": "tag", "begin": "<function=get_weather>",
        "content": {"type": "json_schema", "json_schema": WEATHER_SCHEMA}, "end": "</function>"}}
    out = ok(server, {"text": CHAT.format("What is the weather in Paris?"), "sampling_params": {
        "temperature": 0, "max_new_tokens": 48, "structural_tag": json.dumps(tag)}})
    m = re.fullmatch(r"<function=get_weather>(.*)</function>", out["text"], re.S)
    assert m, out["text"]
    jsonschema.validate(json.loads(m.group(1)), WEATHER_SCHEMA)
    legacy = {"structures": [{"begin": "<function=get_weather>", "schema": WEATHER_SCHEMA,
                              "end": "</function>"}], "triggers": ["<function="]}
    free = ok(server, {"text": CHAT.format("Hi"), "sampling_params": {
        "temperature": 0, "max_new_tokens": 8, "structural_tag": json.dumps(legacy)}})
    assert free["meta_info"]["completion_tokens"] >= 1  # SGLang's legacy form is accepted


def test_with_n_stream_logprobs_and_stop(backend_url: str) -> None:
    body = {"text": CHAT.format("Capital of France as JSON."), "sampling_params": {
        "temperature": 0.9, "max_new_tokens": 64, "json_schema": json.dumps(CAPITAL_SCHEMA),
        "n": 3}}
    for o in ok(backend_url, body):
        jsonschema.validate(json.loads(o["text"]), CAPITAL_SCHEMA)
    single = {**body, "sampling_params": {**body["sampling_params"], "n": 1, "sampling_seed": 5},
              "return_logprob": True}
    full = ok(backend_url, single)
    assert len(full["meta_info"]["output_token_logprobs"]) == full["meta_info"]["completion_tokens"]
    with requests.post(f"{backend_url}/generate", json={**single, "stream": True}, stream=True,
                       timeout=600) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith(b"data: {")]
    assert chunks[-1]["text"] == full["text"]
    stopped = ok(backend_url, {**single, "sampling_params": {
        **single["sampling_params"], "stop": ","}})
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": ","}
    assert full["text"].startswith(stopped["text"]) and "," not in stopped["text"]


@pytest.mark.parametrize("params,message", [
    ({"json_schema": "{not json"}, "Invalid json_schema: "),
    ({"regex": "(unbalanced"}, "Invalid regex: "),
    ({"ebnf": "root ::= ("}, "Invalid ebnf: "),
    ({"regex": "a", "json_schema": "{}"},
     "Only one of json_schema, regex, ebnf, or structural_tag can be set."),
    ({"structural_tag": "{\"type\": \"structural_tag\", \"format\": {\"type\": \"nope\"}}"},
     "Invalid structural_tag: "),
])
def test_invalid_grammars_are_400(server: str, params: dict, message: str) -> None:
    for stream in (False, True):
        r = post(server, {"text": "Hi", "stream": stream, "sampling_params": params})
        if stream and r.status_code == 200:  # the error arrives as an SSE error event
            assert message in r.text
        else:
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith(message), r.text
    ok(server, {"text": "Hi", "sampling_params": {"max_new_tokens": 2, "regex": "(a|b)"}})


def test_outlines_refuses_what_it_cannot_do(outlines_server: str) -> None:
    for kind, text in (("ebnf", GREETINGS), ("structural_tag", "{}")):
        r = post(outlines_server, {"text": "Hi", "sampling_params": {kind: text}})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == (
            f"The outlines grammar backend does not support {kind}; supported: json_schema, "
            "regex. Start the server with --grammar-backend xgrammar.")
    bad = post(outlines_server, {"text": "Hi", "sampling_params": {"regex": "(x"}})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("Invalid regex")
    ok(outlines_server, {"text": "Hi", "sampling_params": {"max_new_tokens": 2, "regex": "a|b"}})


def test_compiling_a_grammar_does_not_stall_other_requests(outlines_server: str) -> None:
    """A request whose grammar compiles for a while (a 40-field schema takes outlines a second
    or so) waits outside the batch: while the engine reports it waiting, the engine's step
    counter advances and a running stream keeps receiving chunks. Events, not a clock."""
    import threading

    chunks: list[int] = []

    def stream() -> None:
        with requests.post(f"{outlines_server}/generate", stream=True, timeout=600, json={
                "text": "Count slowly:", "rid": "bystander", "stream": True,
                "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}}) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    chunks.append(1)

    bystander = threading.Thread(target=stream)
    bystander.start()
    while len(chunks) < 3:
        assert bystander.is_alive()
        time.sleep(0.01)
    fields = {f"field_{i}": {"type": "string", "pattern": "^[a-z]{1,12}$"} for i in range(40)}
    schema = {"type": "object", "properties": fields, "required": list(fields)}
    compiling = threading.Thread(target=ok, args=(outlines_server, {"text": "Hi", "sampling_params": {
        "max_new_tokens": 1, "json_schema": json.dumps(schema)}}))
    compiling.start()
    seen = []  # (engine steps, stream chunks) while the grammar request waits
    while compiling.is_alive():
        state = server_state(outlines_server)
        if state["num_grammar_waiting"] == 1:
            seen.append((state["forward_ct"], len(chunks)))
    compiling.join()
    requests.post(f"{outlines_server}/abort_request", json={"rid": "bystander"}, timeout=30)
    bystander.join(60)
    assert len(seen) >= 2, seen
    assert seen[-1][0] > seen[0][0], seen  # the engine kept stepping
    assert seen[-1][1] > seen[0][1], seen  # and the stream kept receiving tokens

class _PlainTokenizer:
    """A tokenizer whose EOS is not among its special ids (as some transformers versions convert
    the demo GGUF's tokenizer)."""

    all_special_ids = ()

    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "b": 1, "</s>": 2}


def test_outlines_vocabulary_leaves_out_eos_even_when_not_special() -> None:
    from sglang.srt.constrained.base_grammar_backend import GrammarKey
    from sglang.srt.constrained.outlines_backend import OutlinesBackend, token_bytes

    assert token_bytes(_PlainTokenizer(), 3, exclude=[2]) == {b"a": [0], b"b": [1]}
    # outlines refuses a vocabulary holding the EOS token ("EOS token should not be inserted")
    backend = OutlinesBackend(_PlainTokenizer(), 3, [2])
    matcher = backend.matcher(backend.compile(GrammarKey("regex", "a|b")))
    assert matcher.accept_token(0) and matcher.accept_token(2) and matcher.is_terminated()
