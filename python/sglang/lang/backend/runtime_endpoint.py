"""The backend for an SGLang server (this project's or SGLang's): the native ``/generate`` API.

``RuntimeEndpoint`` speaks the wire protocol of the frontend document (§4): gens as
``/generate`` requests on the program's whole text, selects as prompt-logprob requests with
``max_new_tokens: 0``, typed gens as regexes. ``Runtime`` starts this project's server in a
subprocess and wraps an endpoint to it.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.chat_template import (
    ChatTemplate,
    get_chat_template,
    get_chat_template_by_architecture,
    get_chat_template_by_model_path,
)
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglang.lang.global_config import global_config
from sglang.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, SglSamplingParams
from sglang.utils import http_request

# dtype of a typed gen -> (regex, stop strings added)
_DTYPE_REGEX: dict[Any, tuple[str, list[str]]] = {
    int: (REGEX_INT, [" ", "\n"]),
    float: (REGEX_FLOAT, [" ", "\n"]),
    str: (REGEX_STR, []),
    bool: (REGEX_BOOL, []),
}
_DTYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool}
_LOGPROB_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num",
                   "return_text_in_logprobs")


def compute_normalized_prompt_logprobs(input_logprobs: list[list[Any]]) -> float:
    """Mean of the prompt logprobs, leaving out None and 0.0 (as SGLang's client does)."""
    values = [entry[0] for entry in input_logprobs if entry[0]]
    return sum(values) / len(values) if values else 0.0


class RuntimeEndpoint(BaseBackend):
    def __init__(self, base_url: str, api_key: str | None = None, verify: str | None = None,
                 chat_template_name: str | None = None) -> None:
        super().__init__()
        self.support_concate_and_append = True
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.verify = verify
        self.model_info = self._get("/get_model_info")
        if chat_template_name:
            self.chat_template = get_chat_template(chat_template_name)
        else:
            self.chat_template = self._model_template()

    def _model_template(self) -> ChatTemplate:
        """The template of the model path; for a vision-language model whose path matches no
        template, the one of its architecture (``/model_info``), so that ``sgl.image`` writes
        the model's image placeholder."""
        template = get_chat_template_by_model_path(self.model_info["model_path"])
        if template.name != "default" or not self.model_info.get("has_image_understanding"):
            return template
        try:
            architectures = self._get("/model_info").get("architectures")
        except (RuntimeError, OSError, ValueError, AttributeError):  # a server without it
            return template
        return get_chat_template_by_architecture(architectures) or template

    # ---- plain calls ----
    def _get(self, path: str) -> Any:
        return http_request(self.base_url + path, api_key=self.api_key,
                            verify=self.verify).json()

    def _post(self, path: str, body: Any) -> Any:
        return http_request(self.base_url + path, json=body, api_key=self.api_key,
                            verify=self.verify).json()

    def get_model_name(self) -> str:
        return self.model_info["model_path"]

    def flush_cache(self) -> None:
        http_request(self.base_url + "/flush_cache", api_key=self.api_key, verify=self.verify,
                     method="POST")

    def get_server_info(self) -> dict:
        return self._get("/get_server_info")

    def start_profile(self) -> None:
        self._get("/start_profile")

    def stop_profile(self) -> None:
        self._get("/stop_profile")

    def cache_prefix(self, prefix_str: str) -> None:
        self._post("/generate", {"text": prefix_str, "sampling_params": {"max_new_tokens": 0}})

    def commit_lazy_operations(self, s: Any) -> None:
        body = {"text": s.text_, "sampling_params": {"max_new_tokens": 0}}
        self._add_images(s, body)
        self._post("/generate", body)

    def fill_image(self, s: Any) -> None:
        self.commit_lazy_operations(s)

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        """Nothing to send: the children's text is appended to the parent's by the interpreter,
        and the radix cache reuses the KV of every prefix the server has seen."""

    # ---- gen ----
    def _gen_body(self, s: Any, params: SglSamplingParams) -> dict[str, Any]:
        self._dtype_to_regex(params)
        body: dict[str, Any] = {
            "text": s.text_,
            "sampling_params": {
                "skip_special_tokens": global_config.skip_special_tokens_in_output,
                "spaces_between_special_tokens":
                    global_config.spaces_between_special_tokens_in_out,
                **params.to_srt_kwargs(),
            },
        }
        for name in _LOGPROB_FIELDS:
            value = getattr(params, name, None)
            if value is not None:
                body[name] = value
        self._add_images(s, body)
        return body

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, Any]:
        reply = self._post("/generate", self._gen_body(s, sampling_params))
        if isinstance(reply, list):  # n > 1
            return [r["text"] for r in reply], [r["meta_info"] for r in reply]
        return reply["text"], reply["meta_info"]

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict]]:
        body = self._gen_body(s, sampling_params)
        body["stream"] = True
        response = http_request(self.base_url + "/generate", json=body, stream=True,
                                api_key=self.api_key, verify=self.verify)
        pos = 0
        for line in response.iter_lines(decode_unicode=False):
            line = line.decode("utf-8")
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(json.dumps(chunk["error"]))
            text = chunk["text"]  # cumulative
            yield text[pos:], chunk["meta_info"]
            pos = len(text)

    @staticmethod
    def _dtype_to_regex(params: SglSamplingParams) -> None:
        if params.dtype is None:
            return
        dtype = _DTYPE_NAMES.get(params.dtype, params.dtype)
        if dtype not in _DTYPE_REGEX:
            raise RuntimeError(f"Invalid dtype: {params.dtype}")
        regex, stops = _DTYPE_REGEX[dtype]
        if params.regex is not None:
            warnings.warn("Both dtype and regex are set. Only dtype will be used.",
                          stacklevel=3)
        stop = params.stop
        stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        params.stop = stop + stops
        params.regex = regex

    @staticmethod
    def _add_images(s: Any, body: dict[str, Any]) -> None:
        """The state's images as ``image_data``, in program order: one image as its base64
        string (SGLang's wire format), several as a list (one per placeholder of the text)."""
        if len(s.images_) == 1:
            body["image_data"] = s.images_[0][1]
        elif s.images_:
            body["image_data"] = [data for _, data in s.images_]

    # ---- select ----
    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        assert temperature <= 1e-5, "select is greedy: temperature must be 0"
        # Prefill the common prefix (cached for the choices) and learn its token count.
        body: dict[str, Any] = {"text": s.text_, "sampling_params": {"max_new_tokens": 0}}
        self._add_images(s, body)
        prompt_len = self._post("/generate", body)["meta_info"]["prompt_tokens"]
        # Two tokens before the choice: the boundary token may merge with it (token healing).
        body = {"text": [s.text_ + c for c in choices],
                "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                "return_logprob": True, "return_text_in_logprobs": True,
                "logprob_start_len": max(prompt_len - 2, 0)}
        self._add_images(s, body)
        replies = self._post("/generate", body)
        input_logprobs = [r["meta_info"]["input_token_logprobs"] for r in replies]
        output_logprobs = [r["meta_info"]["output_token_logprobs"] for r in replies]
        normalized = [compute_normalized_prompt_logprobs(lps) for lps in input_logprobs]
        for i, lps in enumerate(input_logprobs):
            # Drop the leading prefix token unless it was merged with the choice (healed).
            if len(lps) > 1 and lps[0][2] is not None and s.text_.endswith(lps[0][2]):
                first = lps[0][0] or 0.0
                normalized[i] = (normalized[i] * len(lps) - first) / (len(lps) - 1)
                input_logprobs[i] = lps[1:]
        unconditional = None
        if choices_method.requires_unconditional_logprobs:
            # logprob_start_len 0: the whole choice (servers differ in their default start).
            body = {"input_ids": [[entry[1] for entry in lps] for lps in input_logprobs],
                    "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
                    "logprob_start_len": 0}
            unconditional = [r["meta_info"]["input_token_logprobs"]
                             for r in self._post("/generate", body)]
        return choices_method(choices=choices, normalized_prompt_logprobs=normalized,
                              input_token_logprobs=input_logprobs,
                              output_token_logprobs=output_logprobs,
                              unconditional_token_logprobs=unconditional)


def _free_port(start: int) -> int:
    for port in range(start, 40000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{start}, 40000)")


def _cli_flags(kwargs: dict[str, Any]) -> list[str]:
    """ServerArgs keywords as launch_server flags (True -> the bare flag, lists -> values)."""
    flags: list[str] = []
    for key, value in kwargs.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


class Runtime:
    """This project's server in a subprocess; ``.endpoint`` is a ``RuntimeEndpoint`` to it.

    Keywords are ``launch_server``'s flags (``model_path="..."``, ``context_length=2048``).
    """

    def __init__(self, log_level: str = "error", launch_timeout: float = 300.0, *args: Any,
                 **kwargs: Any) -> None:
        host = kwargs.pop("host", "127.0.0.1")
        port = _free_port(int(kwargs.pop("port", 30000)))
        self.url = f"http://{host}:{port}"
        self.api_key = kwargs.get("api_key")
        command = [sys.executable, "-m", "sglang.launch_server", *map(str, args),
                   *_cli_flags({**kwargs, "host": host, "port": port, "log_level": log_level})]
        self.process: subprocess.Popen | None = subprocess.Popen(
            command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        atexit.register(self.shutdown)
        self._wait_ready(launch_timeout)
        self.endpoint = RuntimeEndpoint(self.url, api_key=self.api_key)

    def _wait_ready(self, timeout: float) -> None:
        import requests

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with code {self.process.returncode} while starting")
            try:
                if requests.get(f"{self.url}/health_generate", headers=headers,
                                timeout=30).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.shutdown()
        raise TimeoutError(f"the server did not become ready within {timeout} s")

    def shutdown(self) -> None:
        process, self.process = getattr(self, "process", None), None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def cache_prefix(self, prefix: str) -> None:
        self.endpoint.cache_prefix(prefix)

    def get_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.endpoint.get_model_name())

    def generate(self, prompt: str | list[str], sampling_params: dict | None = None,
                 return_logprob: bool = False, logprob_start_len: int | None = None,
                 top_logprobs_num: int | None = None) -> str:
        """One ``/generate`` request; the reply as a JSON string."""
        import requests

        body = {"text": prompt, "sampling_params": sampling_params or {},
                "return_logprob": return_logprob, "logprob_start_len": logprob_start_len,
                "top_logprobs_num": top_logprobs_num}
        body = {k: v for k, v in body.items() if v is not None}
        return json.dumps(requests.post(f"{self.url}/generate", json=body, headers=self._headers(),
                                        timeout=None).json())

    async def async_generate(self, prompt: str, sampling_params: dict | None = None):
        """Yield the text deltas of a streamed ``/generate``."""
        import aiohttp

        body = {"text": prompt, "sampling_params": sampling_params or {}, "stream": True}
        pos = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            async with session.post(f"{self.url}/generate", json=body,
                                    headers=self._headers()) as response:
                async for raw in response.content:
                    line = raw.decode("utf-8").strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        raise RuntimeError(json.dumps(chunk["error"]))
                    yield chunk["text"][pos:]
                    pos = len(chunk["text"])

    add_request = async_generate

    def encode(self, prompt: str | list[str]) -> str:
        import requests

        return json.dumps(requests.post(f"{self.url}/encode", json={"text": prompt},
                                        headers=self._headers(), timeout=None).json())

    async def get_server_info(self) -> dict:
        return self.endpoint.get_server_info()

    def start_profile(self) -> None:
        self.endpoint.start_profile()

    def stop_profile(self) -> None:
        self.endpoint.stop_profile()

    def _headers(self) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None

    def __del__(self) -> None:
        self.shutdown()
