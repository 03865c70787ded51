"""bench_serving's backends: the payload each sends, how each reads its stream, and one small run
of each against a demo server (same workload, same token counts as the native backend)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sglang import bench_serving as bs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_utils import DEMO_MODEL, SERVER_ARGS, serving

ROW = bs.DatasetRow(input_ids=[5, 6, 7], output_len=4, prompt="a b c")


def target(backend: str) -> bs.Target:
    return bs.Target(backend, "http://h:1", "m", True, {"extra": 1})


class FakeResponse:
    """An aiohttp response whose body is the given SSE events."""

    def __init__(self, events: list[Any]) -> None:
        lines = [b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n"
                 for e in events]
        self.content = _aiter(lines)


async def _aiter(items: list[bytes]) -> Any:
    for item in items:
        yield item


def read(reader: Any, events: list[Any]) -> tuple[bs.RequestOutput, bs.StreamTimer]:
    out = bs.RequestOutput(prompt_len=3)
    timer = bs.StreamTimer(0.0)
    asyncio.run(reader(FakeResponse(events), timer, out))
    return out, timer


# ---- payloads and readers (no server) --------------------------------------------------------------
def test_urls_and_payloads() -> None:
    assert target("sglang").api_url == "http://h:1/generate"
    assert target("sglang-oai").api_url == "http://h:1/v1/completions"
    assert target("sglang-oai-chat").api_url == "http://h:1/v1/chat/completions"
    oai = bs.completions_payload(target("sglang-oai"), ROW, 4)
    assert oai["prompt"] == [5, 6, 7] and oai["max_tokens"] == 4 and oai["ignore_eos"] is True
    assert oai["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert oai["extra"] == 1 and oai["stream"] is True and oai["temperature"] == 0.0
    assert bs.completions_payload(target("vllm"), ROW, 4)["prompt"] == "a b c"
    chat = bs.chat_payload(target("sglang-oai-chat"), ROW, 4)
    assert chat["messages"] == [{"role": "user", "content": "a b c"}]
    assert chat["max_tokens"] == 4 and chat["ignore_eos"] is True and chat["stream"] is True
    assert set(bs.PROTOCOLS) == set(bs.BACKEND_PATHS)
    args = bs.parse_args(["--backend", "sglang-oai-chat"])
    assert args.backend == "sglang-oai-chat"


def _usage(prompt: int, done: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def test_completions_reader_counts_the_servers_tokens() -> None:
    events = [{"choices": [{"text": "ab"}], "usage": _usage(3, 2)},
              {"choices": [{"text": ""}], "usage": _usage(3, 2)},
              {"choices": [{"text": "c"}], "usage": _usage(3, 4)},
              {"choices": [], "usage": _usage(3, 4)}, b"[DONE]"]
    out, timer = read(bs._read_completions, events)
    assert out.output_len == 4 and out.prompt_len == 3
    assert timer.tokens == 4 and len(timer.itl) == 2  # 2 tokens in the first chunk, then 2


def test_readers_without_continuous_usage_count_chunks() -> None:
    events = [{"choices": [{"text": "a"}]}, {"choices": [{"text": "b"}]},
              {"choices": [], "usage": _usage(9, 2)}, b"[DONE]"]
    out, timer = read(bs._read_completions, events)
    assert (out.output_len, out.prompt_len, timer.tokens, len(timer.itl)) == (2, 9, 2, 1)
    chat = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"delta": {"content": "x"}}]}, {"choices": [{"delta": {"content": "y"}}]},
            {"choices": [{"delta": {}, "finish_reason": "length"}]}, b"[DONE]"]
    out, timer = read(bs._read_chat, chat)
    assert (out.output_len, timer.tokens) == (2, 2)


def test_stream_error_fails_the_request() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        read(bs._read_chat, [{"error": {"message": "boom"}}])


# ---- against a server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving(DEMO_MODEL, SERVER_ARGS) as url:
        yield url


def bench(server: str, backend: str) -> dict[str, Any]:
    args = bs.parse_args(["--backend", backend, "--base-url", server, "--num-prompts", "3",
                          "--random-input-len", "16", "--random-output-len", "5",
                          "--random-range-ratio", "1.0", "--warmup-requests", "0",
                          "--seed", "3"])
    return bs.run_benchmark(args)


def test_openai_backends_match_the_native_workload(server: str) -> None:
    native = bench(server, "sglang")
    oai = bench(server, "sglang-oai")
    for result in (native, oai):
        assert result["completed"] == 3 and result["failed"] == 0, result
        assert result["total_output_tokens"] == 15  # ignore_eos: exactly the asked length
        assert result["mean_ttft_ms"] > 0 and result["mean_itl_ms"] > 0
    assert oai["total_input_tokens"] == native["total_input_tokens"] == 48
    chat = bench(server, "sglang-oai-chat")
    assert chat["completed"] == 3 and chat["failed"] == 0, chat
    assert chat["total_output_tokens"] == 15
    assert chat["total_input_tokens"] > 48  # the chat template's tokens come on top
    assert chat["mean_ttft_ms"] > 0 and chat["mean_itl_ms"] > 0
