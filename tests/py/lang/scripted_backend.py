"""A scripted backend for the DSL tests: no server, no model."""

from __future__ import annotations

import time

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.chat_template import get_chat_template
from sglang.lang.choices import ChoicesDecision


class ScriptedBackend(BaseBackend):
    """``generate`` answers ``reply(prompt, params)``; every call is recorded."""

    def __init__(self, template: str = "default", reply=None) -> None:
        super().__init__()
        self.chat_template = get_chat_template(template)
        self.reply = reply or (lambda prompt, params: "X")
        self.calls: list[tuple[str, object]] = []
        self.cached: list[str] = []

    def generate(self, s, sampling_params):
        self.calls.append((s.text_, sampling_params))
        return self.reply(s.text_, sampling_params), {"prompt": s.text_}

    def generate_stream(self, s, sampling_params):
        self.calls.append((s.text_, sampling_params))
        for ch in self.reply(s.text_, sampling_params):
            time.sleep(0.01)  # a reader sees several chunks
            yield ch, {"chunk": ch}

    def select(self, s, choices, temperature, choices_method):
        self.calls.append((s.text_, choices))
        return ChoicesDecision(choices[-1], {"choices": choices})

    def cache_prefix(self, prefix_str: str) -> None:
        self.cached.append(prefix_str)
