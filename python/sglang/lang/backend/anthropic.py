"""The backend for the Anthropic Messages API (Anthropic itself, or this project's
``/v1/messages``); images of a turn go as base64 ``image`` blocks. Needs the ``anthropic``
package (``pip install "sglang[anthropic]"``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.backend.image_parts import anthropic_content
from sglang.lang.chat_template import get_chat_template
from sglang.lang.ir import SglSamplingParams

try:
    import anthropic
except ImportError as e:  # an optional extra
    raise ImportError('The Anthropic backend needs the anthropic package: '
                      'pip install "sglang[anthropic]"') from e


class Anthropic(BaseBackend):
    def __init__(self, model_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.model_name = model_name
        self.chat_template = get_chat_template("claude")
        self.client = anthropic.Anthropic(*args, **kwargs)

    def get_model_name(self) -> str:
        return self.model_name

    def _request(self, s: Any, params: SglSamplingParams) -> dict[str, Any]:
        """Messages (the program's turns, or its text as one user turn), system popped out."""
        image_token = self.chat_template.image_token
        messages = [{**m, "content": anthropic_content(m["content"], image_token)}
                    if isinstance(m["content"], list) else dict(m) for m in s.messages_]
        messages = messages or [{"role": "user", "content": s.text_}]
        system = messages.pop(0)["content"] if messages[0]["role"] == "system" else ""
        kwargs = params.to_anthropic_kwargs()
        if kwargs.get("top_k") is not None and kwargs["top_k"] <= 0:
            kwargs.pop("top_k")  # -1 means "off" in SGLang; the API wants it absent
        if not kwargs["stop_sequences"]:
            kwargs.pop("stop_sequences")
        # Newer clients dropped the sampling keywords; the API still takes them in the body.
        sampling = {k: kwargs.pop(k) for k in ("temperature", "top_p", "top_k") if k in kwargs}
        return {"model": self.model_name, "system": system, "messages": messages, **kwargs,
                "extra_body": sampling}

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[str, dict]:
        reply = self.client.messages.create(**self._request(s, sampling_params))
        text = "".join(block.text for block in reply.content if block.type == "text")
        return text, {"stop_reason": reply.stop_reason,
                      "prompt_tokens": reply.usage.input_tokens,
                      "completion_tokens": reply.usage.output_tokens}

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict]]:
        with self.client.messages.stream(**self._request(s, sampling_params)) as stream:
            for text in stream.text_stream:
                yield text, {}
