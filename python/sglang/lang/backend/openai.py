"""The backend for OpenAI-compatible APIs (OpenAI itself, Azure, this project's ``/v1``).

Chat models get the program's messages (a gen must follow ``sgl.assistant`` unless speculative
execution records the turn and fills it with one call at its end); completion models get the
program's text. Typed gens and ``select`` need a completion model and a tiktoken tokenizer
(logit bias on token ids). Needs the ``openai`` package (``pip install "sglang[openai]"``).

Images (``sgl.image``) of a chat message go as ``image_url`` parts with a ``data:`` URL, where
they stand in the message's text (``image_parts.chat_messages``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.backend.image_parts import chat_messages
from sglang.lang.chat_template import ChatTemplate, get_chat_template_by_model_path
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglang.lang.ir import SglSamplingParams

logger = logging.getLogger(__name__)

try:
    import openai
except ImportError as e:  # an optional extra
    raise ImportError('The OpenAI backend needs the openai package: '
                      'pip install "sglang[openai]"') from e

# Completion-only (instruct) models; every other model name is a chat model.
INSTRUCT_MODEL_NAMES = ["gpt-3.5-turbo-instruct"]
RETRIES = 3
RETRY_SLEEP_S = 5


@dataclasses.dataclass
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int

    def reset(self) -> None:
        self.prompt_tokens = self.completion_tokens = 0


def _retryable(error: Exception) -> bool:
    """Connection problems, rate limits and server errors are retried; a 4xx is not."""
    if isinstance(error, (openai.APIConnectionError, openai.RateLimitError)):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def openai_completion(client, token_usage: TokenUsage, is_chat: bool, prompt: Any,
                      retries: int = RETRIES, **kwargs: Any) -> str | list[str]:
    """One (chat) completion with retries; the text, or a list of texts when n > 1."""
    if is_chat and kwargs.get("stop") is None:
        kwargs.pop("stop", None)
    for attempt in range(retries):
        try:
            if is_chat:
                reply = client.chat.completions.create(messages=prompt, **kwargs)
                texts = [c.message.content or "" for c in reply.choices]
            else:
                reply = client.completions.create(prompt=prompt, **kwargs)
                texts = [c.text for c in reply.choices]
            if reply.usage is not None:
                token_usage.prompt_tokens += reply.usage.prompt_tokens
                token_usage.completion_tokens += reply.usage.completion_tokens
            return texts[0] if len(texts) == 1 else texts
        except openai.APIError as e:
            if not _retryable(e) or attempt == retries - 1:
                raise
            logger.error("OpenAI error: %s. Waiting %s seconds...", e, RETRY_SLEEP_S)
            time.sleep(RETRY_SLEEP_S)
    raise AssertionError("unreachable")


def openai_completion_stream(client, token_usage: TokenUsage, is_chat: bool, prompt: Any,
                             **kwargs: Any) -> Iterator[tuple[str, dict]]:
    if is_chat and kwargs.get("stop") is None:
        kwargs.pop("stop", None)
    kwargs["stream_options"] = {"include_usage": True}
    if is_chat:
        stream = client.chat.completions.create(messages=prompt, stream=True, **kwargs)
    else:
        stream = client.completions.create(prompt=prompt, stream=True, **kwargs)
    for chunk in stream:
        if chunk.usage is not None:
            token_usage.prompt_tokens += chunk.usage.prompt_tokens
            token_usage.completion_tokens += chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        if is_chat:
            yield chunk.choices[0].delta.content or "", {}
        else:
            yield chunk.choices[0].text or "", {}


class OpenAI(BaseBackend):
    def __init__(self, model_name: str, is_chat_model: bool | None = None,
                 chat_template: ChatTemplate | None = None, is_azure: bool = False,
                 *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.client = (openai.AzureOpenAI(*args, **kwargs) if is_azure
                       else openai.OpenAI(*args, **kwargs))
        self.model_name = model_name
        self._tokenizer: Any = None
        self.chat_template = chat_template or get_chat_template_by_model_path(model_name)
        self.is_chat_model = (is_chat_model if is_chat_model is not None
                              else model_name not in INSTRUCT_MODEL_NAMES)
        self.chat_prefix = self.chat_template.role_prefix_and_suffix["assistant"][0]
        self.token_usage = TokenUsage(0, 0)
        self.spec_max_num_tries = 3

    @property
    def tokenizer(self) -> Any:
        """The model's tiktoken encoding (for logit bias); loaded when first needed."""
        if self._tokenizer is None:
            try:
                import tiktoken
            except ImportError as e:
                raise ImportError("select and typed gens on the OpenAI backend need tiktoken: "
                                  'pip install "sglang[openai]"') from e
            try:
                self._tokenizer = tiktoken.encoding_for_model(self.model_name)
            except KeyError:
                self._tokenizer = tiktoken.get_encoding("cl100k_base")
        return self._tokenizer

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def get_model_name(self) -> str:
        return self.model_name

    def _sampling_kwargs(self, params: SglSamplingParams) -> dict[str, Any]:
        kwargs = params.to_openai_kwargs()
        if self.model_name.startswith(("o1", "o3")) or "o1" in self.model_name:
            kwargs.pop("max_tokens", None)  # reasoning models take only max_completion_tokens
        else:
            kwargs.pop("max_completion_tokens", None)
        return kwargs

    def _chat_prompt(self, s: Any) -> list[dict]:
        if not s.text_.endswith(self.chat_prefix):
            raise RuntimeError(
                "This use case is not supported if api speculative execution is off. For "
                "OpenAI chat models, sgl.gen must be right after sgl.assistant. Example of "
                "adding api speculative execution: @function(num_api_spec_tokens=128).")
        return chat_messages(s.messages_, self.chat_template.image_token)

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, dict]:
        dtype = sampling_params.dtype
        kwargs = self._sampling_kwargs(sampling_params)
        if dtype is None:
            prompt = self._chat_prompt(s) if self.is_chat_model else s.text_
            comp = openai_completion(self.client, self.token_usage, self.is_chat_model, prompt,
                                     model=self.model_name, **kwargs)
        elif dtype in (str, "str", "string"):
            assert not self.is_chat_model, "constrained type not supported on chat model"
            kwargs.pop("stop")
            comp = openai_completion(self.client, self.token_usage, False, s.text_ + '"',
                                     model=self.model_name, stop='"', **kwargs)
            comp = [f'"{c}"' for c in comp] if isinstance(comp, list) else f'"{comp}"'
        elif dtype in (int, "int"):
            assert not self.is_chat_model, "constrained type not supported on chat model"
            kwargs.pop("stop")
            comp = openai_completion(self.client, self.token_usage, False, s.text_,
                                     model=self.model_name, stop=[" "],
                                     logit_bias=self._int_logit_bias(), **kwargs)
        elif dtype in (float, "float", bool, "bool"):
            raise ValueError(f"dtype {dtype} is not supported by the OpenAI backend")
        else:
            raise ValueError(f"Unknown dtype: {dtype}")
        return comp, {}

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict]]:
        if sampling_params.dtype is not None:
            raise ValueError(f"Unknown dtype: {sampling_params.dtype}")
        prompt = self._chat_prompt(s) if self.is_chat_model else s.text_
        return openai_completion_stream(self.client, self.token_usage, self.is_chat_model,
                                        prompt, model=self.model_name,
                                        **self._sampling_kwargs(sampling_params))

    def _int_logit_bias(self) -> dict[str, int]:
        """+100 on the tokens that are digits or spaces (at most 299), and end of text."""
        tokenizer = self.tokenizer
        bias: dict[str, int] = {}
        for token_id in range(tokenizer.n_vocab):
            if len(bias) >= 299:
                break
            try:
                text = tokenizer.decode([token_id])
            except Exception:  # ids without text in this encoding  # noqa: BLE001
                continue
            if text and all(ch.isdigit() or ch == " " for ch in text):
                bias[str(token_id)] = 100
        bias[str(tokenizer.eot_token)] = 100
        return bias

    # ---- select: greedy probing with logit bias (completion models) ----
    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        if self.is_chat_model:
            raise NotImplementedError("select/choices is not supported for chat models. "
                                      "Please try to use a non-chat model such as "
                                      "gpt-3.5-turbo-instruct")
        tokens = [self.tokenizer.encode(c) for c in choices]
        prompt = self.tokenizer.encode(s.text_)
        valid = [bool(t) for t in tokens]
        scores = [0] * len(choices)
        step = 0
        while sum(valid) > 1:
            bias = {str(tokens[i][step]): 100 for i in range(len(choices)) if valid[i]}
            reply = self.client.completions.create(model=self.model_name, prompt=prompt,
                                                   logit_bias=bias, max_tokens=1,
                                                   temperature=temperature)
            picked = self.tokenizer.encode(reply.choices[0].text)
            picked_token = picked[0] if picked else None
            for i in range(len(choices)):
                if not valid[i]:
                    continue
                if tokens[i][step] == picked_token:
                    scores[i] += 1
                else:
                    valid[i] = False
                if step == len(tokens[i]) - 1:
                    valid[i] = False
            if picked_token is None:
                break
            prompt = prompt + [picked_token]
            step += 1
        best = max(range(len(choices)), key=lambda i: scores[i])
        return ChoicesDecision(choices[best], {"scores": scores})

    # ---- speculative execution on chat models: one call per assistant turn ----
    def spec_fill(self, s: Any, value: str) -> None:
        _spec_format(s).append({"text": value, "stop": None, "name": None})

    def spec_pattern_gen(self, s: Any, name: str | None, params: SglSamplingParams) -> None:
        if not getattr(s, "spec_kwargs", None):
            s.spec_kwargs = self._sampling_kwargs(params)
            s.spec_kwargs["max_tokens"] = s.num_api_spec_tokens
            s.spec_kwargs.pop("stop", None)
        _spec_format(s).append({"text": "", "stop": params.stop, "name": name})

    def role_end_generate(self, s: Any) -> None:
        terms = _spec_format(s)
        if any(term["name"] is not None for term in terms):
            for _ in range(self.spec_max_num_tries):
                comp = openai_completion(self.client, self.token_usage, True,
                                         chat_messages(s.messages_,
                                                       self.chat_template.image_token),
                                         model=self.model_name, **s.spec_kwargs)
                if _match_spec_pattern(terms, comp):
                    break
        for term in terms:
            s.text_ += term["text"]
            if term["name"] is not None:
                s.variables[term["name"]] = term["text"]
                s.meta_info[term["name"]] = {}
                s.variable_event[term["name"]].set()
        s.spec_format, s.spec_kwargs = [], {}


def _spec_format(s: Any) -> list[dict]:
    if not hasattr(s, "spec_format"):
        s.spec_format = []
    return s.spec_format


def _match_spec_pattern(terms: list[dict], comp: str) -> bool:
    """Split one generated turn into the recorded fills and gens (gens end at their stops)."""
    for i, term in enumerate(terms):
        if term["name"] is None:
            if not comp.startswith(term["text"]):
                return False
            comp = comp[len(term["text"]):]
            continue
        stops = term["stop"]
        stops = [stops] if isinstance(stops, str) else list(stops or ())
        found = [p for p in (comp.find(x) for x in stops if x) if p != -1]
        if found:
            term["text"], comp = comp[:min(found)], comp[min(found):]
        elif i == len(terms) - 1:
            term["text"], comp = comp, ""
        else:
            return False
    return True


class Crusoe(OpenAI):
    """Crusoe's OpenAI-compatible cloud (``CRUSOE_API_KEY``)."""

    def __init__(self, model_name: str, api_key: str | None = None,
                 base_url: str | None = None, chat_template: ChatTemplate | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model_name, chat_template=chat_template,
                         api_key=api_key or os.environ.get("CRUSOE_API_KEY"),
                         base_url=base_url or "https://managed-inference-api-proxy.crusoecloud.com/v1/",
                         **kwargs)
