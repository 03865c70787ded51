"""The backend for LiteLLM (any provider LiteLLM routes to). Needs ``pip install litellm``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.chat_template import ChatTemplate, get_chat_template_by_model_path
from sglang.lang.ir import SglSamplingParams

try:
    import litellm
except ImportError as e:  # an optional extra
    raise ImportError('The LiteLLM backend needs the litellm package: '
                      'pip install "sglang[litellm]"') from e


class LiteLLM(BaseBackend):
    def __init__(self, model_name: str, chat_template: ChatTemplate | None = None,
                 api_key: str | None = None, organization: str | None = None,
                 base_url: str | None = None, timeout: float = 600,
                 max_retries: int = 2, default_headers: dict | None = None) -> None:
        super().__init__()
        self.model_name = model_name
        self.chat_template = chat_template or get_chat_template_by_model_path(model_name)
        self.client_params = {"api_key": api_key, "organization": organization,
                              "base_url": base_url, "timeout": timeout,
                              "max_retries": max_retries, "default_headers": default_headers}

    def get_model_name(self) -> str:
        return self.model_name

    def _messages(self, s: Any) -> list[dict]:
        return s.messages_ or [{"role": "user", "content": s.text_}]

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[str, dict]:
        reply = litellm.completion(model=self.model_name, messages=self._messages(s),
                                   **self.client_params, **sampling_params.to_litellm_kwargs())
        return reply.choices[0].message.content or "", {}

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict]]:
        stream = litellm.completion(model=self.model_name, messages=self._messages(s),
                                    stream=True, **self.client_params,
                                    **sampling_params.to_litellm_kwargs())
        for chunk in stream:
            yield chunk.choices[0].delta.content or "", {}
