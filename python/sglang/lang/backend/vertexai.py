"""The backend for Google Vertex AI (Gemini). Needs ``pip install google-cloud-aiplatform`` and
the environment variable ``GCP_PROJECT_ID``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.chat_template import get_chat_template
from sglang.lang.ir import SglSamplingParams

try:
    import vertexai
    from vertexai.preview.generative_models import GenerationConfig, GenerativeModel, Image
except ImportError as e:  # an optional extra
    raise ImportError('The VertexAI backend needs google-cloud-aiplatform: '
                      'pip install "sglang[vertexai]"') from e


class VertexAI(BaseBackend):
    def __init__(self, model_name: str, safety_settings: Any = None) -> None:
        super().__init__()
        project_id = os.environ.get("GCP_PROJECT_ID")
        if not project_id:
            raise ValueError("The VertexAI backend needs the environment variable GCP_PROJECT_ID")
        vertexai.init(project=project_id, location=os.environ.get("GCP_LOCATION"))
        self.model_name = model_name
        self.chat_template = get_chat_template("default")
        self.safety_settings = safety_settings

    def get_model_name(self) -> str:
        return self.model_name

    def _contents(self, s: Any) -> Any:
        if s.messages_:
            role = {"user": "user", "assistant": "model", "system": "user"}
            return [{"role": role[m["role"]], "parts": [{"text": m["content"]}]}
                    for m in s.messages_ if isinstance(m["content"], str)]
        if s.cur_images:
            return [Image.from_bytes(__import__("base64").b64decode(data))
                    for _, data in s.cur_images] + [s.text_]
        return s.text_

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[str, dict]:
        reply = GenerativeModel(self.model_name).generate_content(
            self._contents(s), generation_config=GenerationConfig(
                **sampling_params.to_vertexai_kwargs()), safety_settings=self.safety_settings)
        return reply.text, {}

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict]]:
        stream = GenerativeModel(self.model_name).generate_content(
            self._contents(s), stream=True, generation_config=GenerationConfig(
                **sampling_params.to_vertexai_kwargs()), safety_settings=self.safety_settings)
        for chunk in stream:
            yield chunk.text, {}
