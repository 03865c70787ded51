"""``/update_weights_from_disk`` (contract 2.6) on a server started from one tiny random Llama:
generate, update to a second checkpoint (new outputs equal transformers' on that checkpoint,
``weight_version`` changes, the radix cache is flushed), update to a wrong path and to a checkpoint
of another shape (``success: false`` with the contract's message, the second checkpoint still
serves), with a streaming request in flight during an update that completes on the weights it
started with; refused fields; and the offline ``Engine.update_weights_from_disk``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from server_utils import DEMO_MODEL, assert_engine_clean, serving, sse_events

PROMPT = [1, 504, 3127, 314, 253, 1789, 28, 2468, 314]
NEW_TOKENS = 12
LONG = 500  # a stream long enough to be in flight while the update is asked for


def _save(folder: Path, seed: int, hidden: int = 32) -> Path:
    from sglang.srt.hf_transformers_utils import get_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = get_tokenizer(DEMO_MODEL)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=2, bos_token_id=1,
                         tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _hf_greedy(folder: Path, n: int = NEW_TOKENS) -> list[int]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=n, pad_token_id=0)  # fmt: skip
    return out[0, len(PROMPT):].tolist()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"a": _save(tmp_path_factory.mktemp("ckpt-a"), 0),
            "b": _save(tmp_path_factory.mktemp("ckpt-b"), 1),
            "wide": _save(tmp_path_factory.mktemp("ckpt-wide"), 2, hidden=48)}  # fmt: skip


@pytest.fixture(scope="module")
def url(ckpts: dict[str, Path]) -> Iterator[str]:
    with serving(str(ckpts["a"]), ["--dtype", "float32", "--log-level", "warning"]) as u:
        yield u


def _generate(url: str, n: int = NEW_TOKENS) -> dict:
    r = requests.post(f"{url}/generate", timeout=60, json={
        "input_ids": PROMPT,
        "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}})
    assert r.status_code == 200, r.text
    return r.json()


def _update(url: str, **body: object) -> requests.Response:
    return requests.post(f"{url}/update_weights_from_disk", json=body, timeout=120)


def test_update_swaps_weights_while_a_stream_completes(url: str, ckpts: dict[str, Path]) -> None:
    want_a, want_b = _hf_greedy(ckpts["a"]), _hf_greedy(ckpts["b"])
    long_a = _hf_greedy(ckpts["a"], LONG)
    assert want_a != want_b
    assert _generate(url)["output_ids"] == want_a
    # A stream in flight: the update waits for it, so it ends on the weights it started with.
    stream = requests.post(f"{url}/generate", stream=True, timeout=120, json={
        "input_ids": PROMPT, "stream": True,
        "sampling_params": {"max_new_tokens": LONG, "temperature": 0, "ignore_eos": True}})
    events = sse_events(stream)
    first = next(events)
    assert isinstance(first, dict) and first["meta_info"]["finish_reason"] is None
    result: dict = {}

    def update() -> None:
        result["sent"] = time.monotonic()
        result["r"] = _update(url, model_path=str(ckpts["b"]), weight_version="v2")
        result["answered"] = time.monotonic()

    updater = threading.Thread(target=update)
    updater.start()
    chunks = [first, *(e for e in events if isinstance(e, dict))]
    stream_end = time.monotonic()
    updater.join(timeout=120)
    assert chunks[-1]["output_ids"] == long_a  # whole, and all from checkpoint a
    # the update was asked for while the stream ran, and answered once it had ended
    assert result["sent"] < stream_end < result["answered"], result
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "num_paused_requests": 0,
                        "message": "Succeeded to update model weights. Weight version updated "
                                   "to v2."}  # fmt: skip
    after = _generate(url)
    assert after["output_ids"] == want_b
    assert after["meta_info"]["weight_version"] == "v2"
    assert after["meta_info"]["cached_tokens"] == 0  # the old weights' cache was flushed
    info = requests.get(f"{url}/get_model_info", timeout=30).json()
    assert info["weight_version"] == "v2" and info["model_path"] == str(ckpts["b"])
    assert requests.get(f"{url}/get_weight_version", timeout=30).json() == {"weight_version": "v2"}


def test_failed_updates_keep_the_served_weights(url: str, ckpts: dict[str, Path]) -> None:
    served = _generate(url)["output_ids"]
    wrong = "qwen/qwen2.5-0.5b-instruct-wrong"
    r = _update(url, model_path=wrong)
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False and body["num_paused_requests"] == 0
    assert body["message"].startswith(f"Failed to get weights iterator: {wrong} (")
    r = _update(url, model_path=str(ckpts["wide"]))
    assert r.status_code == 400 and "hidden_size" in r.json()["message"]
    assert _generate(url)["output_ids"] == served
    assert requests.get(f"{url}/get_weight_version", timeout=30).json()["weight_version"] == "v2"


@pytest.mark.parametrize(("body", "needle"), [
    ({}, "model_path"),
    ({"model_path": 3}, "model_path"),
    ({"model_path": ""}, "model_path"),
    ({"model_path": "x", "load_format": "bitsandbytes"}, "load_format"),
    ({"model_path": "x", "is_async": True}, "is_async"),
    ({"model_path": "x", "token_step": 2}, "token_step"),
    ({"model_path": "x", "abort_all_requests": "maybe"}, "abort_all_requests"),
])  # fmt: skip
def test_invalid_update_requests(url: str, body: dict, needle: str) -> None:
    r = requests.post(f"{url}/update_weights_from_disk", data=json.dumps(body), timeout=30)
    assert r.status_code == 400 and needle in r.text, r.text


def test_abort_all_requests_ends_the_stream(url: str, ckpts: dict[str, Path]) -> None:
    stream = requests.post(f"{url}/generate", stream=True, timeout=120, json={
        "input_ids": PROMPT, "stream": True,
        "sampling_params": {"max_new_tokens": 400, "temperature": 0, "ignore_eos": True}})
    events = sse_events(stream)
    next(events)
    r = _update(url, model_path=str(ckpts["a"]), abort_all_requests=True)
    assert r.status_code == 200 and r.json()["success"], r.text
    last = [e for e in events if isinstance(e, dict)][-1]
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(last["output_ids"]) < 400
    assert _generate(url)["output_ids"] == _hf_greedy(ckpts["a"])
    assert_engine_clean(url)


def test_offline_engine_update(ckpts: dict[str, Path]) -> None:
    import sglang as sgl

    with sgl.Engine(model_path=str(ckpts["a"]), dtype="float32", log_level="warning") as llm:
        params = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
        assert llm.generate(input_ids=PROMPT, sampling_params=params)["output_ids"] == \
            _hf_greedy(ckpts["a"])
        ok, message, paused = llm.update_weights_from_disk(str(ckpts["b"]))
        assert (ok, message, paused) == (True, "Succeeded to update model weights.", 0)
        assert llm.generate(input_ids=PROMPT, sampling_params=params)["output_ids"] == \
            _hf_greedy(ckpts["b"])
        ok, message, _ = llm.update_weights_from_disk("/no/such/dir")
        assert not ok and message.startswith("Failed to get weights iterator: /no/such/dir")


def test_update_under_concurrent_load(url: str, ckpts: dict[str, Path]) -> None:
    """Clients keep sending while two updates run: every request succeeds, each one entirely on
    one checkpoint's weights (its tokens equal a or b's greedy continuation), and nothing is left
    behind in the engine."""
    from concurrent.futures import ThreadPoolExecutor

    want = {tuple(_hf_greedy(ckpts[k])) for k in ("a", "b")}
    stop = threading.Event()

    def client() -> list[tuple[int, ...]]:
        seen = []
        while not stop.is_set():
            seen.append(tuple(_generate(url)["output_ids"]))
        return seen

    with ThreadPoolExecutor(6) as pool:
        clients = [pool.submit(client) for _ in range(6)]
        time.sleep(0.5)
        for target in ("b", "a"):
            r = _update(url, model_path=str(ckpts[target]))
            assert r.status_code == 200 and r.json()["success"], r.text
        time.sleep(0.5)
        stop.set()
        outputs = [o for c in clients for o in c.result(timeout=120)]
    assert len(outputs) > 12 and set(outputs) <= want
    assert _generate(url)["output_ids"] == _hf_greedy(ckpts["a"])
    assert_engine_clean(url)
