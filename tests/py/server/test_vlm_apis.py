"""Images through the OpenAI and Anthropic routes and the frontend language, on a server of a tiny
random-weight Qwen2-VL (fp32): ``image_url`` parts of ``/v1/chat/completions``, ``image`` blocks
of ``/v1/messages`` and ``sgl.image`` (``RuntimeEndpoint``, and the ``OpenAI`` backend against the
server's ``/v1``) give what the native ``/generate`` gives on the same chat-templated text and
images, and what transformers gives; and the 400s (a malformed or unsupported part, an image on a
text-only model, a template that prints content as a string)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import openai
import pytest
import requests
import sglang as sgl
from server_utils import serving
from sglang.lang.backend.image_parts import anthropic_content, chat_content
from sglang.srt.entrypoints.anthropic.messages import check_images
from sglang.srt.entrypoints.anthropic.protocol import AnthropicError, MessagesRequest
from sglang.srt.entrypoints.openai import chat
from sglang.srt.entrypoints.openai.common import OpenAIError
from vlm_utils import IMAGE_PART, HFQwenVL, image, png_bytes, save_tiny_qwen2_vl

NEW = 6
GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A name no template matcher knows: the frontend must find the template by architecture.
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-vision-model"))


@pytest.fixture(scope="module")
def hf(folder: Path) -> HFQwenVL:
    return HFQwenVL(folder)


@pytest.fixture(scope="module")
def url(folder: Path) -> Iterator[str]:
    with serving(str(folder), ["--dtype", "float32", "--log-level", "warning"]) as u:
        yield u


@pytest.fixture(scope="module")
def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY")


def b64(img: Any) -> str:
    return base64.b64encode(png_bytes(img)).decode()


def data_url(img: Any) -> str:
    return "data:image/png;base64," + b64(img)


def generate(url: str, text: str, images: list[str], **params: Any) -> dict[str, Any]:
    """The native /generate reply."""
    r = requests.post(f"{url}/generate", timeout=120, json={
        "text": text, "image_data": images, "sampling_params": {**GREEDY, **params}})
    assert r.status_code == 200, r.text
    return r.json()


def templated(hf: HFQwenVL, messages: list[dict[str, Any]]) -> str:
    """The chat-templated text of messages with HF image parts (``{"type": "image"}``)."""
    return hf.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def hf_ids(hf: HFQwenVL, messages: list[dict[str, Any]]) -> list[int]:
    return hf.tokenizer.encode(templated(hf, messages), add_special_tokens=False)


# ---- OpenAI /v1/chat/completions ---------------------------------------------------------------
@pytest.mark.parametrize("sizes", [[(90, 60)], [(64, 64), (112, 84)]])
def test_chat_image_url_parts_match_generate_and_transformers(
    url: str, hf: HFQwenVL, oai: openai.OpenAI, sizes: list[tuple[int, int]]
) -> None:
    images = [image(w, h, seed=10 + i) for i, (w, h) in enumerate(sizes)]
    content: list[dict[str, Any]] = [{"type": "text", "text": "Look at"}]
    hf_content: list[dict[str, Any]] = [{"type": "text", "text": "Look at"}]
    for k, img in enumerate(images):
        content += [{"type": "image_url", "image_url": {"url": data_url(img), "detail": "low"}},
                    {"type": "text", "text": f" and {k}"}]
        hf_content += [{"type": "image"}, {"type": "text", "text": f" and {k}"}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    hf_messages = [messages[0], {"role": "user", "content": hf_content}]
    text = templated(hf, hf_messages)
    assert text.count(IMAGE_PART) == len(images)
    native = generate(url, text, [data_url(i) for i in images])
    assert native["output_ids"] == hf.greedy(hf_ids(hf, hf_messages), images, NEW)
    reply = oai.chat.completions.create(model="default", messages=messages, max_tokens=NEW,
                                        temperature=0, extra_body={"ignore_eos": True})
    assert reply.choices[0].message.content == native["text"]
    assert reply.usage.prompt_tokens == native["meta_info"]["prompt_tokens"]
    assert reply.usage.completion_tokens == NEW
    stream = oai.chat.completions.create(model="default", messages=messages, max_tokens=NEW,
                                         temperature=0, extra_body={"ignore_eos": True},
                                         stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) \
        == native["text"]


def test_chat_image_order_follows_the_messages(url: str, hf: HFQwenVL,
                                               oai: openai.OpenAI) -> None:
    """Images of several messages reach image_data in message order."""
    first, second = image(70, 56, seed=21), image(56, 84, seed=22)
    parts = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in (first, second)]
    messages = [
        {"role": "user", "content": [parts[0], {"type": "text", "text": "One."}]},
        {"role": "assistant", "content": "Seen."},
        {"role": "user", "content": [{"type": "text", "text": "Two:"}, parts[1]]},
    ]
    hf_messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "One."}]},
        messages[1],
        {"role": "user", "content": [{"type": "text", "text": "Two:"}, {"type": "image"}]},
    ]
    want = hf.greedy(hf_ids(hf, hf_messages), [first, second], NEW)
    native = generate(url, templated(hf, hf_messages), [data_url(first), data_url(second)])
    assert native["output_ids"] == want
    reply = oai.chat.completions.create(model="default", messages=messages, max_tokens=NEW,
                                        temperature=0, extra_body={"ignore_eos": True})
    assert reply.choices[0].message.content == native["text"]


@pytest.mark.parametrize(("part", "needle"), [
    ({"type": "image_url", "image_url": "http://x/y.png"},
     "messages[0].content[1].image_url: must be an object with a 'url' string"),
    ({"type": "image_url", "image_url": {"detail": "low"}},
     "messages[0].content[1].image_url.url: must be a non-empty string"),
    ({"type": "image_url", "image_url": {"url": 7}},
     "messages[0].content[1].image_url.url: must be a non-empty string"),
    ({"type": "image_url"}, "messages[0].content[1].image_url: must be an object"),
    ({"type": "video_url", "video_url": {"url": "http://x/v.mp4"}},
     "messages[0].content[1]: content parts of type 'video_url' are not supported"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
     "content parts of type 'input_audio' are not supported"),
    ({"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"\x89PNG nope").decode()}},
     "not a readable image"),
])  # fmt: skip
def test_bad_image_parts_are_400s(url: str, oai: openai.OpenAI, part: dict, needle: str) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, part]}]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="default", messages=messages, max_tokens=2)
    assert needle in info.value.message


def test_two_images_for_one_placeholder_count_is_a_400(url: str, oai: openai.OpenAI) -> None:
    """An image part the template renders: so is every image; a text placeholder on top of
    them is one placeholder too many."""
    img = {"type": "image_url", "image_url": {"url": data_url(image(30, 30, 1))}}
    messages = [{"role": "user", "content": [{"type": "text", "text": IMAGE_PART}, img]}]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="default", messages=messages, max_tokens=2)
    assert "placeholder" in info.value.message


# ---- Anthropic /v1/messages --------------------------------------------------------------------
def test_anthropic_image_blocks_match_generate(url: str, hf: HFQwenVL) -> None:
    client = anthropic.Anthropic(base_url=url, api_key="EMPTY")
    img, other = image(84, 70, seed=31), image(60, 60, seed=32)
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": b64(img)}},
        {"type": "text", "text": "What is this?"},
        {"type": "text", "text": "And this:"},
        {"type": "image", "source": {"type": "url", "url": data_url(other)}},
    ]  # fmt: skip
    hf_messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is this?\nAnd this:"},
        {"type": "image"}]}]  # fmt: skip
    native = generate(url, templated(hf, hf_messages), [data_url(img), data_url(other)],
                      ignore_eos=False)  # fmt: skip
    assert native["output_ids"][:1] == hf.greedy(hf_ids(hf, hf_messages), [img, other], 1)
    messages = [{"role": "user", "content": content}]
    msg = client.messages.create(model="default", max_tokens=NEW, system="Be brief.",
                                 messages=messages, extra_body={"temperature": 0})
    assert msg.content[0].text == native["text"]
    prompt_tokens = native["meta_info"]["prompt_tokens"]
    assert msg.usage.input_tokens == prompt_tokens
    assert client.messages.count_tokens(model="default", system="Be brief.",
                                        messages=messages).input_tokens == prompt_tokens
    with client.messages.stream(model="default", max_tokens=NEW, system="Be brief.",
                                messages=messages, extra_body={"temperature": 0}) as stream:
        assert "".join(stream.text_stream) == native["text"]
        assert stream.get_final_message().usage.input_tokens == prompt_tokens


@pytest.mark.parametrize(("block", "needle"), [
    ({"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AAAA"}},
     "media_type"),
    ({"type": "image", "source": {"type": "file", "file_id": "f"}}, "source"),
    ({"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                  "data": base64.b64encode(b"\x89PNG nope").decode()}},
     "not a readable image"),
])  # fmt: skip
def test_bad_anthropic_image_blocks_are_400s(url: str, block: dict, needle: str) -> None:
    r = requests.post(f"{url}/v1/messages", timeout=60, json={
        "model": "default", "max_tokens": 2,
        "messages": [{"role": "user", "content": [block, {"type": "text", "text": "Hi"}]}]})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and needle in r.json()["error"]["message"]


# ---- the frontend language ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, Path]]:
    folder = tmp_path_factory.mktemp("pictures")
    out = []
    for k, (w, h) in enumerate([(70, 56), (48, 96)]):
        img = image(w, h, seed=41 + k)
        path = folder / f"pic{k}.png"
        path.write_bytes(png_bytes(img))
        out.append((img, path))
    return out


@sgl.function
def look(s, paths):
    with s.user():
        for path in paths:
            s += sgl.image(str(path))
        s += "What is this?"
    s += sgl.assistant(sgl.gen("answer", max_tokens=NEW, temperature=0, ignore_eos=True))


@pytest.mark.parametrize("count", [1, 2])
def test_sgl_image_matches_generate(url: str, hf: HFQwenVL, pictures: list, count: int) -> None:
    backend = sgl.RuntimeEndpoint(url)
    assert backend.chat_template.name == "qwen2-vl"  # found by the model's architecture
    paths = [p for _, p in pictures[:count]]
    state = look.run(paths=paths, backend=backend)
    answer = state["answer"]
    text = state.text()
    prompt = text[:text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")]
    assert prompt.count(IMAGE_PART) == count
    native = generate(url, prompt, [base64.b64encode(p.read_bytes()).decode() for p in paths],
                      stop=["<|im_end|>"])  # fmt: skip
    assert answer == native["text"]
    want = hf.greedy(hf.tokenizer.encode(prompt), [img for img, _ in pictures[:count]], NEW)
    assert native["output_ids"] == want


def test_sgl_image_through_the_openai_backend(url: str, oai: openai.OpenAI,
                                              pictures: list) -> None:
    """The OpenAI backend sends the image as an image_url part where sgl.image stood (the
    OpenAI API has no ignore_eos: the reply to compare with has none either)."""
    backend = sgl.OpenAI("default", base_url=f"{url}/v1", api_key="EMPTY")
    img, path = pictures[0]
    state = look.run(paths=[path], backend=backend)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(img)}},
        {"type": "text", "text": "What is this?"}]}]  # fmt: skip
    reply = oai.chat.completions.create(model="default", messages=messages, max_tokens=NEW,
                                        temperature=0)
    assert state["answer"] == reply.choices[0].message.content


def test_sgl_image_through_the_anthropic_backend(url: str, pictures: list) -> None:
    """The Anthropic backend sends the image as a base64 image block."""
    backend = sgl.Anthropic("default", base_url=url, api_key="EMPTY")
    img, path = pictures[1]
    state = look.run(paths=[path], backend=backend)
    client = anthropic.Anthropic(base_url=url, api_key="EMPTY")
    msg = client.messages.create(model="default", max_tokens=NEW, system="", messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": b64(img)}},
            {"type": "text", "text": "What is this?"}]}], extra_body={"temperature": 0})
    assert state["answer"] == msg.content[0].text


def test_image_parts_of_a_turn_stand_where_the_images_stood() -> None:
    jpeg = "data:image/jpeg;base64,"
    parts = [{"type": "text", "text": "A <image>B<image>"},
             {"type": "image_url", "image_url": {"url": jpeg + "iVBORw0KGgoAAA"}},
             {"type": "image_url", "image_url": {"url": jpeg + "/9j/AAA"}}]
    assert chat_content(parts, "<image>") == [
        {"type": "text", "text": "A "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAA"}},
        {"type": "text", "text": "B"},
        {"type": "image_url", "image_url": {"url": jpeg + "/9j/AAA"}}]
    # tokens and images that do not pair up: the text (tokens removed), then the images
    assert [p["type"] for p in chat_content(parts[:2], "<image>")] == ["text", "image_url"]
    assert chat_content(parts[:2], "<image>")[0]["text"] == "A B"
    assert anthropic_content(parts, "<image>")[1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAA"}}


# ---- refusals without a server -----------------------------------------------------------------
def stub_tm(takes_images: bool, chat_template: str | None = None) -> Any:
    """What the chat layer reads of a TokenizerManager before it tokenizes."""
    return SimpleNamespace(
        image_processor=object() if takes_images else None,
        info=SimpleNamespace(is_embedding=False, architectures=["LlamaForCausalLM"]),
        args=SimpleNamespace(max_top_logprobs_num=20, chat_template=chat_template,
                             reasoning_parser=None, tool_call_parser=None),
        tokenizer=SimpleNamespace(chat_template=None))


IMAGE_MESSAGES = [{"role": "user", "content": [
    {"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]


def test_image_part_on_a_text_only_model_names_the_part() -> None:
    req = chat.ChatCompletionRequest.model_validate({"messages": IMAGE_MESSAGES})
    with pytest.raises(OpenAIError) as info:
        chat.check_messages(req.messages, chat.image_refusal(stub_tm(False)))
    assert info.value.message == (
        "messages[0].content[1]: image_url parts are not supported: the model LlamaForCausalLM "
        "does not take images (serve a vision-language model).")
    assert chat.check_messages(req.messages, chat.image_refusal(stub_tm(True)))[0]["content"] \
        == [{"type": "text", "text": "Hi"}, {"type": "image"}]
    assert chat.image_urls(req.messages) == ["http://x/a.png"]


def test_image_block_on_a_text_only_model_names_the_block() -> None:
    req = MessagesRequest.model_validate({"model": "m", "max_tokens": 4, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}]}]})
    with pytest.raises(AnthropicError) as info:
        check_images(stub_tm(False), req)
    assert info.value.message.startswith("messages.2.content.1: image blocks are not supported: "
                                         "the model LlamaForCausalLM does not take images")
    check_images(stub_tm(True), req)


def test_a_template_that_prints_content_as_a_string_cannot_take_images() -> None:
    req = chat.ChatCompletionRequest.model_validate({"messages": IMAGE_MESSAGES})
    with pytest.raises(OpenAIError) as info:
        asyncio.run(chat.prepare(stub_tm(True, chat_template="chatml"), req))
    assert info.value.message == chat.IMAGES_NEED_PARTS
