"""Multi-LoRA serving (issue 15) on a server of a tiny random Llama, then a tiny Qwen2 (fp32),
against transformers + peft with the same adapters: greedy tokens and logprobs for each adapter
and for batches mixing every adapter and the base model (three adapters, two slots: the pool
evicts), the radix cache keyed by adapter, adapters loaded and unloaded at run time, the OpenAI
``"model": "base:adapter"`` form, and the 400s (unknown adapter, rank above --max-lora-rank,
another base model, bad fields) after which the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from server_utils import DEMO_MODEL, assert_engine_clean, server_state, serving

peft = pytest.importorskip("peft")  # a test dependency ([test] extra)

NEW = 8
GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}
PROMPTS = [[(37 * i + 11 * j + 5) % 4000 + 100 for j in range(9 + 4 * i)] for i in range(4)]
# name -> (seed, rank, alpha, targets, extra LoraConfig arguments)
ADAPTERS = {
    "alpha": (1, 8, 16, "all-linear", {}),
    "beta": (2, 4, 8, ["q_proj", "v_proj", "down_proj"], {}),
    "gamma": (3, 2, 4, ["k_proj", "o_proj", "gate_proj", "up_proj"], {"use_rslora": True}),
}


def _tiny_config(arch: str, vocab: int, hidden: int = 64) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    cls = LlamaConfig if arch == "llama" else Qwen2Config
    return cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=512, eos_token_id=2, bos_token_id=1,
               tie_word_embeddings=True)  # fmt: skip


def _save_base(folder: Path, arch: str, hidden: int = 64) -> Path:
    from sglang.srt.hf_transformers_utils import get_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = get_tokenizer(DEMO_MODEL)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_config(arch, len(tokenizer), hidden))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _save_adapter(base: Path, folder: Path, seed: int, rank: int, alpha: int, targets: Any,
                  extra: dict[str, Any]) -> Path:  # fmt: skip
    """A random PEFT adapter whose B is large enough to change the greedy tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                             init_lora_weights=False, **extra)  # fmt: skip
    lora = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn_like(param))
    lora.save_pretrained(folder)
    return folder


class HFLora:
    """transformers + peft with every adapter loaded; ``use(name)`` picks one (None: base)."""

    def __init__(self, base: Path, adapters: dict[str, Path]) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        model.generation_config.eos_token_id = None
        (first, path), *rest = adapters.items()
        self.model = peft.PeftModel.from_pretrained(model, path, adapter_name=first).eval()
        for name, folder in rest:
            self.model.load_adapter(folder, adapter_name=name)

    def _run(self, name: str | None, fn: Any) -> Any:
        with torch.inference_mode():
            if name is None:
                with self.model.disable_adapter():
                    return fn()
            self.model.set_adapter(name)
            return fn()

    def greedy(self, name: str | None, prompt: list[int]) -> list[int]:
        ids = torch.tensor([prompt])

        def run() -> list[int]:
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      do_sample=False, max_new_tokens=NEW, pad_token_id=0)
            return out[0, len(prompt):].tolist()

        return self._run(name, run)

    def logprobs(self, name: str | None, seq: list[int]) -> torch.Tensor:
        def run() -> torch.Tensor:
            return torch.log_softmax(self.model(torch.tensor([seq])).logits[0].float(), -1)

        return self._run(name, run)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def base(arch: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_base(tmp_path_factory.mktemp(f"lora-base-{arch}"), arch)


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: _save_adapter(base, root / name, *spec) for name, spec in ADAPTERS.items()}


@pytest.fixture(scope="module")
def hf(base: Path, adapters: dict[str, Path]) -> HFLora:
    return HFLora(base, adapters)


@pytest.fixture(scope="module")
def url(base: Path, adapters: dict[str, Path]) -> Iterator[str]:
    # Three adapters at start, two slots: a batch of all three waits for a slot (eviction).
    paths = [f"{name}={folder}" for name, folder in adapters.items()]
    with serving(str(base), ["--dtype", "float32", "--lora-paths", *paths,
                             "--max-loras-per-batch", "2", "--max-lora-rank", "8",
                             "--lora-target-modules", "all", "--random-seed", "7",
                             "--max-total-tokens", "4096", "--chunked-prefill-size", "16",
                             "--skip-server-warmup",
                             "--log-level", "warning"]) as u:  # fmt: skip
        yield u


def generate(url: str, **body: Any) -> requests.Response:
    body.setdefault("sampling_params", GREEDY)
    return requests.post(f"{url}/generate", json=body, timeout=120)


def ok(r: requests.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def refused(r: requests.Response, *words: str) -> str:
    assert r.status_code == 400, r.text
    text = r.text
    for word in words:
        assert word in text, text
    return text


def check_against_hf(hf: HFLora, name: str | None, prompt: list[int], out: dict[str, Any]) -> None:
    tokens = out["output_ids"]
    assert tokens == hf.greedy(name, prompt), name
    lp = hf.logprobs(name, prompt + tokens)
    got = [entry[0] for entry in out["meta_info"]["output_token_logprobs"]]
    want = [float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(tokens)]
    assert got == pytest.approx(want, abs=2e-3), name
    prompt_lp = [entry[0] for entry in out["meta_info"]["input_token_logprobs"]][1:]
    want_prompt = [float(lp[k, prompt[k + 1]]) for k in range(len(prompt) - 1)]
    assert prompt_lp == pytest.approx(want_prompt, abs=2e-3), name


# ---- against transformers + peft ---------------------------------------------------------------
@pytest.mark.parametrize("name", [*ADAPTERS, None])
def test_each_adapter_matches_peft(url: str, hf: HFLora, name: str | None) -> None:
    prompt = PROMPTS[1]
    out = ok(generate(url, input_ids=prompt, lora_path=name, return_logprob=True,
                      logprob_start_len=0))
    check_against_hf(hf, name, prompt, out)


def test_adapters_change_the_output(url: str) -> None:
    """The test above would pass with adapters ignored if they changed nothing."""
    outs = [tuple(ok(generate(url, input_ids=PROMPTS[0], lora_path=n))["output_ids"])
            for n in [*ADAPTERS, None]]
    assert len(set(outs)) == len(outs)


def test_batch_mixing_every_adapter_and_the_base(url: str, hf: HFLora) -> None:
    names = ["alpha", None, "beta", "gamma", "alpha", "gamma", None, "beta"]
    prompts = [PROMPTS[i % 4] for i in range(len(names))]
    outs = ok(generate(url, input_ids=prompts, lora_path=names, return_logprob=True,
                       logprob_start_len=0))
    for name, prompt, out in zip(names, prompts, outs):
        check_against_hf(hf, name, prompt, out)


def test_many_concurrent_requests_over_more_adapters_than_slots(url: str, hf: HFLora) -> None:
    """Separate concurrent requests over 3 adapters and the base with 2 slots: each adapter is
    evicted and loaded again, and every request still gets its own adapter's tokens."""
    from concurrent.futures import ThreadPoolExecutor

    for wave in range(2):  # each wave needs all three adapters: some are loaded twice
        names = [[*ADAPTERS, None][(i + wave) % 4] for i in range(12)]
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(generate, url, input_ids=PROMPTS[i % 4], lora_path=n)
                       for i, n in enumerate(names)]  # fmt: skip
            outs = [ok(f.result())["output_ids"] for f in futures]
        for i, (name, out) in enumerate(zip(names, outs)):
            assert out == hf.greedy(name, PROMPTS[i % 4]), (wave, i, name)
    assert server_state(url)["lora_slot_loads"] > len(ADAPTERS)  # evicted and loaded again


# ---- the radix cache ---------------------------------------------------------------------------
def test_cache_is_keyed_by_adapter(url: str) -> None:
    prompt = [(13 * j + 7) % 3000 + 200 for j in range(40)]
    first = ok(generate(url, input_ids=prompt, lora_path="alpha"))
    assert first["meta_info"]["cached_tokens"] == 0
    other = ok(generate(url, input_ids=prompt, lora_path="beta"))
    assert other["meta_info"]["cached_tokens"] == 0  # alpha's KV is not beta's
    base = ok(generate(url, input_ids=prompt))
    assert base["meta_info"]["cached_tokens"] == 0
    again = ok(generate(url, input_ids=prompt, lora_path="alpha"))
    assert again["meta_info"]["cached_tokens"] >= len(prompt) - 1
    assert again["output_ids"] == first["output_ids"]


# ---- adapters loaded at run time ---------------------------------------------------------------
def _post(url: str, route: str, **body: Any) -> requests.Response:
    return requests.post(f"{url}/{route}", json=body, timeout=120)


def test_load_use_unload(url: str, hf: HFLora, adapters: dict[str, Path]) -> None:
    r = ok(_post(url, "load_lora_adapter", lora_name="beta2", lora_path=str(adapters["beta"])))
    assert r["success"] and r["loaded_adapters"]["beta2"] == str(adapters["beta"])
    cards = ok(requests.get(f"{url}/v1/models", timeout=10))["data"]
    card = next(c for c in cards if c["id"] == "beta2")
    assert card["parent"] == cards[0]["id"] and card["root"] == str(adapters["beta"])
    assert ok(requests.get(f"{url}/v1/models/beta2", timeout=10))["id"] == "beta2"
    out = ok(generate(url, input_ids=PROMPTS[2], lora_path="beta2"))
    assert out["output_ids"] == hf.greedy("beta", PROMPTS[2])
    r = ok(_post(url, "unload_lora_adapter", lora_name="beta2"))
    assert "beta2" not in r["loaded_adapters"] and "beta" in r["loaded_adapters"]
    refused(generate(url, input_ids=PROMPTS[2], lora_path="beta2"), "unknown LoRA adapter",
            "beta2")
    assert requests.get(f"{url}/v1/models/beta2", timeout=10).status_code == 404
    refused(_post(url, "unload_lora_adapter", lora_name="beta2"), "Unknown LoRA adapter")
    # The same name loaded again with other weights: no stale slot, no stale cache.
    ok(_post(url, "load_lora_adapter", lora_name="beta2", lora_path=str(adapters["gamma"])))
    out = ok(generate(url, input_ids=PROMPTS[2], lora_path="beta2"))
    assert out["output_ids"] == hf.greedy("gamma", PROMPTS[2])
    assert out["meta_info"]["cached_tokens"] == 0
    ok(_post(url, "unload_lora_adapter", lora_name="beta2"))


def test_load_refusals(url: str, base: Path, adapters: dict[str, Path], tmp_path: Path,
                       arch: str) -> None:  # fmt: skip
    refused(_post(url, "load_lora_adapter", lora_name="alpha",
                  lora_path=str(adapters["alpha"])), "already loaded")
    refused(_post(url, "load_lora_adapter", lora_name="x", lora_path=str(tmp_path / "none")),
            "not a PEFT adapter folder")
    # rank 16 > --max-lora-rank 8
    big = _save_adapter(base, tmp_path / "big", 5, 16, 16, ["q_proj"], {})
    refused(_post(url, "load_lora_adapter", lora_name="big", lora_path=str(big)),
            "--max-lora-rank")
    # an adapter of another base model (hidden size 32)
    other = _save_base(tmp_path / "other", arch, hidden=32)
    wrong = _save_adapter(other, tmp_path / "wrong", 6, 4, 8, ["q_proj"], {})
    refused(_post(url, "load_lora_adapter", lora_name="wrong", lora_path=str(wrong)),
            "another base model")
    refused(_post(url, "load_lora_adapter", lora_name="", lora_path=str(adapters["beta"])),
            "name")
    assert len(refused(_post(url, "load_lora_adapter", lora_name="long",
                             lora_path="x" * 5000), "at most 4096")) < 1000
    refused(_post(url, "load_lora_adapter", lora_name="nul", lora_path="a\x00b"), "PEFT")
    refused(_post(url, "load_lora_adapter", lora_name="dir", lora_path=str(tmp_path)), "PEFT")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(
        (adapters["beta"] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors" * 10)
    refused(_post(url, "load_lora_adapter", lora_name="broken", lora_path=str(broken)),
            "not a readable safetensors file")
    refused(_post(url, "load_lora_adapter", lora_name="p", lora_path=str(adapters["beta"]),
                  pinned=True), "pinned")
    assert requests.post(f"{url}/load_lora_adapter", json={"lora_name": "q"},
                         timeout=10).status_code == 400
    assert set(ok(_post(url, "load_lora_adapter", lora_name="beta3", lora_path=str(
        adapters["beta"])))["loaded_adapters"]) == {*ADAPTERS, "beta3"}
    ok(_post(url, "unload_lora_adapter", lora_name="beta3"))


# ---- requests --------------------------------------------------------------------------------
def test_request_refusals(url: str) -> None:
    refused(generate(url, input_ids=PROMPTS[0], lora_path="nope"), "unknown LoRA adapter",
            "nope")
    refused(generate(url, input_ids=PROMPTS[0], lora_path=7), "lora_path")
    refused(generate(url, input_ids=PROMPTS[0], lora_path=""), "lora_path")
    refused(generate(url, input_ids=PROMPTS[0], lora_path="x" * 300), "lora_path")
    refused(generate(url, input_ids=PROMPTS[:2], lora_path=["alpha"]), "lora_path", "batch size")
    refused(generate(url, input_ids=PROMPTS[:2], lora_path=["alpha", 3]), "lora_path")
    # One adapter for the whole batch; n > 1 samples share the prompt's adapter.
    outs = ok(generate(url, input_ids=PROMPTS[:2], lora_path="alpha"))
    assert [o["output_ids"] for o in outs] == [
        ok(generate(url, input_ids=p, lora_path="alpha"))["output_ids"] for p in PROMPTS[:2]]
    samples = ok(generate(url, input_ids=PROMPTS[3], lora_path="gamma",
                          sampling_params={**GREEDY, "n": 2}))
    single = ok(generate(url, input_ids=PROMPTS[3], lora_path="gamma"))["output_ids"]
    assert [s["output_ids"] for s in samples] == [single, single]


def test_openai_model_selects_adapter(url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    served = client.models.list().data[0].id
    assert {m.id for m in client.models.list().data} >= {served, *ADAPTERS}
    for name in ["beta", None]:
        model = f"{served}:{name}" if name else served
        done = client.completions.create(model=model, prompt=PROMPTS[1], max_tokens=NEW,
                                         temperature=0, extra_body={"ignore_eos": True})
        text = ok(generate(url, input_ids=PROMPTS[1], lora_path=name))["text"]
        assert done.choices[0].text == text and done.model == model
    extra = client.completions.create(model=served, prompt=PROMPTS[1], max_tokens=NEW,
                                      temperature=0,
                                      extra_body={"ignore_eos": True, "lora_path": "alpha"})
    assert extra.choices[0].text == ok(generate(url, input_ids=PROMPTS[1],
                                                lora_path="alpha"))["text"]
    with pytest.raises(openai.BadRequestError, match="unknown LoRA adapter"):
        client.chat.completions.create(model=f"{served}:nope", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])


def test_chat_and_anthropic_select_adapter(url: str) -> None:
    import anthropic
    import openai

    served = openai.OpenAI(base_url=f"{url}/v1", api_key="none").models.list().data[0].id
    messages = [{"role": "user", "content": "Tell me about the sea"}]
    chat = openai.OpenAI(base_url=f"{url}/v1", api_key="none").chat.completions
    texts = {name: chat.create(model=f"{served}:{name}" if name else served, messages=messages,
                               max_tokens=NEW, temperature=0).choices[0].message.content
             for name in ["alpha", "gamma", None]}  # fmt: skip
    assert len(set(texts.values())) == 3
    claude = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=60)
    for name, text in texts.items():
        reply = claude.messages.create(model=f"{served}:{name}" if name else served,
                                       max_tokens=NEW, messages=messages,
                                       extra_body={"temperature": 0})
        assert reply.content[0].text == text, name


def test_engine_clean_after_everything(url: str) -> None:
    assert_engine_clean(url)  # idle, core and adapter-pool integrity, no KV held


# ---- the offline engine -------------------------------------------------------------------------
def test_offline_engine_adapters(base: Path, adapters: dict[str, Path], hf: HFLora,
                                 arch: str) -> None:  # fmt: skip
    if arch != "llama":
        pytest.skip("one architecture is enough for the Engine methods")
    import sglang as sgl

    with sgl.Engine(model_path=str(base), dtype="float32", max_total_tokens=2048,
                    lora_paths={"alpha": str(adapters["alpha"])}, max_lora_rank=8,
                    lora_target_modules=["all"], random_seed=3) as llm:  # fmt: skip
        out = llm.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, lora_path="alpha")
        assert out["output_ids"] == hf.greedy("alpha", PROMPTS[0])
        reply = llm.load_lora_adapter("g", str(adapters["gamma"]))
        assert reply.success and set(reply.loaded_adapters) == {"alpha", "g"}
        outs = llm.generate(input_ids=PROMPTS[:2], sampling_params=GREEDY,
                            lora_path=["g", None])
        assert outs[0]["output_ids"] == hf.greedy("gamma", PROMPTS[0])
        assert outs[1]["output_ids"] == hf.greedy(None, PROMPTS[1])
        assert llm.unload_lora_adapter("g").loaded_adapters == {"alpha": str(adapters["alpha"])}
        assert not llm.unload_lora_adapter("g").success
        assert not llm.load_lora_adapter("p", str(adapters["beta"]), pinned=True).success
        with pytest.raises(ValueError, match="unknown LoRA adapter"):
            llm.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, lora_path="g")


# ---- data-parallel replicas --------------------------------------------------------------------
def test_adapters_on_data_parallel_replicas(base: Path, adapters: dict[str, Path], hf: HFLora,
                                            arch: str) -> None:  # fmt: skip
    """--dp-size 2: every replica serves the adapters, and a run-time load reaches both."""
    if arch != "llama":
        pytest.skip("one architecture is enough for the replicas")
    with serving(str(base), ["--dtype", "float32", "--dp-size", "2",
                             "--load-balance-method", "round_robin",
                             "--lora-paths", f"alpha={adapters['alpha']}", "--max-lora-rank", "8",
                             "--lora-target-modules", "all", "--max-total-tokens", "2048",
                             "--skip-server-warmup", "--log-level", "warning"]) as u:  # fmt: skip
        names = ["alpha", None, "alpha", None]
        outs = ok(generate(u, input_ids=[PROMPTS[i] for i in range(4)], lora_path=names))
        for i, (name, out) in enumerate(zip(names, outs)):
            assert out["output_ids"] == hf.greedy(name, PROMPTS[i]), i
        r = ok(_post(u, "load_lora_adapter", lora_name="g", lora_path=str(adapters["gamma"])))
        assert set(r["loaded_adapters"]) == {"alpha", "g"}
        def loads() -> list[int]:
            info = requests.get(f"{u}/get_server_info", timeout=30).json()
            return [state["lora_slot_loads"] for state in info["internal_states"]]

        before = loads()
        for i in (2, 3):  # round robin: one request on each replica, each loads "g"
            out = ok(generate(u, input_ids=PROMPTS[i], lora_path="g"))
            assert out["output_ids"] == hf.greedy("gamma", PROMPTS[i])
        assert [b + 1 for b in before] == loads()


# ---- a server without --enable-lora (the session's demo server) --------------------------------
def test_lora_requests_refused_without_enable_lora(server: str) -> None:
    refused(generate(server, text="hi", lora_path="alpha"), "--enable-lora")
    refused(_post(server, "load_lora_adapter", lora_name="a", lora_path="/tmp"),
            "--enable-lora")
    refused(_post(server, "unload_lora_adapter", lora_name="a"), "--enable-lora")
    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none")
    with pytest.raises(openai.BadRequestError, match="--enable-lora"):
        client.completions.create(model="base", prompt="hi", max_tokens=2,
                                  extra_body={"lora_path": "alpha"})
    # Without LoRA a model name with a colon is only a name (Ollama style), never an adapter.
    done = client.completions.create(model="llama3:8b", prompt="hi", max_tokens=2)
    assert done.model == "llama3:8b" and done.choices[0].text
