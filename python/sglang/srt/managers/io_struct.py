"""Request bodies of the native API and the messages between the HTTP and engine processes.

``GenerateReqInput`` is the ``/generate`` body (pydantic: wrong JSON types become the contract's
400 E2 error). ``GenerateReqInput.normalize`` turns a single/batch/n>1 request into a flat list of
``SingleGenerateReq`` (prompt-major order), with the contract's validation messages. The
tokenizer manager turns each into a ``TokenizedGenerateReq`` for the engine process, which answers
with ``BatchTokenOut`` messages. All inter-process messages are plain dataclasses (pickled over ZMQ).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated, Any, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Tag,
    ValidationInfo,
    model_validator,
)

from sglang.srt.managers.finish_reason import FinishReason
from sglang.srt.multimodal.inputs import ImageInputs
from sglang.srt.sampling.sampling_params import SamplingParams


def _one_or_batch(value: Any) -> str:
    """'batch' for a list of lists (one list per prompt), else 'one'."""
    return "batch" if isinstance(value, list) and value and isinstance(value[0], list) else "one"


def _embeds_one_or_batch(value: Any) -> str:
    """'batch' for [prompts][tokens][hidden], else 'one' ([tokens][hidden])."""
    first = value[0] if isinstance(value, list) and value else None
    return _one_or_batch(first) if isinstance(first, list) else "one"


def _either(one: Any, batch: Any, shape: Any = _one_or_batch) -> Any:
    """A single-or-batch field: the branch is chosen by the value's shape, so a bad value is
    checked against one type only (pydantic's plain unions try every branch)."""
    return Annotated[Union[Annotated[one, Tag("one")], Annotated[batch, Tag("batch")]],
                     Discriminator(shape)]


TokenIds = _either(list[int], list[list[int]])
Embeds = _either(list[list[float]], list[list[list[float]]], _embeds_one_or_batch)

# Fields of SGLang's /generate that this server does not implement yet: a request that sets one
# is refused (400) rather than served without it. Value: what the field would need.
UNSUPPORTED_FIELDS = {
    "video_data": "video inputs (only images are supported: image_data)",
    "audio_data": "audio inputs (only images are supported: image_data)",
    "session_params": "sessions",
    "priority": "priority scheduling",
    "bootstrap_host": "prefill/decode disaggregation",
    "bootstrap_port": "prefill/decode disaggregation",
    "bootstrap_room": "prefill/decode disaggregation",
    "routed_dp_rank": "requests choosing their data-parallel replica (the router chooses)",
    "data_parallel_rank": "requests choosing their data-parallel replica (the router chooses)",
}


class GenerateReqInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Optional[Union[list[str], str]] = None
    input_ids: Optional[TokenIds] = None
    input_embeds: Optional[Embeds] = None
    sampling_params: Optional[Union[list[Optional[dict[str, Any]]], dict[str, Any]]] = None
    rid: Optional[Union[list[str], str]] = None
    stream: bool = False
    return_logprob: Optional[Union[list[bool], bool]] = None
    logprob_start_len: Optional[Union[list[int], int]] = None
    top_logprobs_num: Optional[Union[list[int], int]] = None
    token_ids_logprob: Optional[TokenIds] = None
    return_text_in_logprobs: bool = False
    return_hidden_states: Union[list[Union[bool, str, None]], bool, str, None] = False
    custom_logit_processor: Optional[Union[list[Optional[str]], str]] = None
    log_metrics: bool = True
    return_prompt_token_ids: bool = False
    # Images of each prompt (vision-language models): see ``_image_items``.
    image_data: Optional[Any] = None
    # The LoRA adapter (name) of every prompt, or one per prompt (null: the base model).
    lora_path: Optional[Any] = None
    # Not supported yet (UNSUPPORTED_FIELDS): declared so that setting one is a clear 400.
    video_data: Optional[Any] = None
    audio_data: Optional[Any] = None
    session_params: Optional[Any] = None
    priority: Optional[Any] = None
    bootstrap_host: Optional[Any] = None
    bootstrap_port: Optional[Any] = None
    bootstrap_room: Optional[Any] = None
    routed_dp_rank: Optional[Any] = None
    data_parallel_rank: Optional[Any] = None

    @model_validator(mode="before")
    @classmethod
    def _check_large_lists(cls, data: Any, info: ValidationInfo) -> Any:
        """Fail-fast checks of the fields that can hold millions of values, before pydantic, which
        would report (and build a message for) every bad element. With a ``max_batch_size`` in
        the validation context, a batch larger than that is refused before it is parsed."""
        if isinstance(data, dict):
            limit = (info.context or {}).get("max_batch_size")
            if limit is not None:
                _check_batch_size(data, limit)
            for name in ("input_ids", "token_ids_logprob"):
                _check_nested(data.get(name), name, _is_int, "an integer", depth=2)
            _check_nested(data.get("input_embeds"), "input_embeds", _is_number, "a number",
                          depth=3)
            text = data.get("text")
            if isinstance(text, list):
                _check_nested(text, "text", lambda v: isinstance(v, str), "a string", depth=1)
        return data

    def batch_size(self) -> int:
        """Prompts in the request (1 for a single prompt)."""
        if self.input_embeds is not None:
            embeds = self.input_embeds  # [tokens][hidden], or [prompts][tokens][hidden]
            return len(embeds) if _embeds_one_or_batch(embeds) == "batch" else 1
        if self.input_ids is not None:
            return len(self.input_ids) if _one_or_batch(self.input_ids) == "batch" else 1
        return len(self.text) if isinstance(self.text, list) else 1

    def unsupported_fields(self) -> list[str]:
        """The UNSUPPORTED_FIELDS this request sets (null, [] and {} count as unset)."""
        return [name for name in UNSUPPORTED_FIELDS if _is_set(getattr(self, name))]

    def normalize(self) -> tuple[list[SingleGenerateReq], bool]:
        """The flat list of requests (prompt-major for n > 1) and whether the reply is a list."""
        if self.text is None and self.input_ids is None and self.input_embeds is None:
            raise ValueError("Either text, input_ids or input_embeds should be provided.")
        prompts: list[dict[str, Any]]
        if self.input_embeds is not None:
            embeds = self.input_embeds
            is_batch = bool(embeds) and isinstance(embeds[0], list) and bool(embeds[0]) \
                and isinstance(embeds[0][0], list)
            items = embeds if is_batch else [embeds]
            prompts = [{"input_embeds": e} for e in items]
        elif self.input_ids is not None:
            ids = self.input_ids
            if len(ids) == 0:
                raise ValueError("input_ids cannot be empty.")
            is_batch = isinstance(ids[0], list)
            items = ids if is_batch else [ids]
            for item in items:
                if len(item) == 0:
                    raise ValueError("input_ids cannot be empty.")
            prompts = [{"input_ids": list(i)} for i in items]
        else:
            is_batch = isinstance(self.text, list)
            items = self.text if is_batch else [self.text]
            prompts = [{"text": t} for t in items]
        batch_size = len(prompts)
        if is_batch and batch_size == 0:
            raise ValueError("Either text, input_ids or input_embeds should be provided.")

        params_list = self._per_item_params(batch_size)
        images = _image_items(self.image_data, batch_size, is_batch)
        adapters = _lora_items(self.lora_path, batch_size, is_batch)
        n = self._parallel_sample_num(params_list)
        if n > 1:
            for name in ("return_logprob", "logprob_start_len", "top_logprobs_num",
                         "token_ids_logprob", "custom_logit_processor"):
                value = getattr(self, name)
                if isinstance(value, list) and (
                    name != "token_ids_logprob" or (value and isinstance(value[0], list))
                ):
                    raise ValueError(f"Cannot use list {name} with parallel_sample_num > 1")
        rids = self._rids(batch_size, is_batch, n)
        reqs: list[SingleGenerateReq] = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                k = i * n + j
                reqs.append(SingleGenerateReq(
                    rid=rids[k],
                    text=prompt.get("text"),
                    input_ids=prompt.get("input_ids"),
                    input_embeds=prompt.get("input_embeds"),
                    image_data=images[i],
                    lora_path=adapters[i],
                    sampling_params=dict(params_list[i] or {}),
                    return_logprob=bool(_item(self.return_logprob, i, batch_size, False)),
                    logprob_start_len=int(_item(self.logprob_start_len, i, batch_size, -1)),
                    top_logprobs_num=int(_item(self.top_logprobs_num, i, batch_size, 0)),
                    token_ids_logprob=_token_ids_item(self.token_ids_logprob, i, batch_size),
                    return_text_in_logprobs=self.return_text_in_logprobs,
                    return_hidden_states=_hidden_states_mode(
                        _item(self.return_hidden_states, i, batch_size, False)),
                    custom_logit_processor=_item(self.custom_logit_processor, i, batch_size, None),
                    stream=self.stream,
                    index=k,
                    prompt_index=i,
                    parallel_sample_num=n,
                ))
        return reqs, is_batch or n > 1

    def _per_item_params(self, batch_size: int) -> list[dict[str, Any] | None]:
        sp = self.sampling_params
        if isinstance(sp, list):
            if len(sp) != batch_size:
                raise ValueError(
                    "The length of sampling_params should be equal to the batch size."
                )
            return list(sp)
        return [sp] * batch_size

    @staticmethod
    def _parallel_sample_num(params_list: list[dict[str, Any] | None]) -> int:
        values = set()
        for p in params_list:
            n = (p or {}).get("n")
            n = 1 if n is None else n
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"n must be a positive integer, got {n!r}.")
            values.add(n)
        if len(values) > 1:
            raise ValueError(
                "The parallel_sample_num should be the same for all samples in sample params.")
        return values.pop()

    def _rids(self, batch_size: int, is_batch: bool, n: int) -> list[str]:
        total = batch_size * n
        if n > 1 or self.rid is None:
            # With n > 1 every sample gets a fresh id (SGLang does not keep the user's rid there).
            return [uuid.uuid4().hex for _ in range(total)]
        if isinstance(self.rid, str):
            return [self.rid] if not is_batch else [f"{self.rid}_{i}" for i in range(batch_size)]
        if len(self.rid) != batch_size:
            raise ValueError(
                "The specified rids length mismatch with the batch_size for batch processing."
            )
        if len(set(self.rid)) != len(self.rid):
            dups = sorted({r for r in self.rid if self.rid.count(r) > 1})
            raise ValueError(f"Duplicate request IDs detected within the request: {dups}")
        return list(self.rid)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return type(v) is int or type(v) is float


def _is_set(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, dict)):
        return any(_is_set(v) for v in (value.values() if isinstance(value, dict) else value))
    return True


def _check_batch_size(data: dict[str, Any], limit: int) -> None:
    for name in ("text", "input_ids", "input_embeds"):
        value = data.get(name)
        depth = {"text": 0, "input_ids": 1, "input_embeds": 2}[name]
        is_batch = isinstance(value, list) and (
            depth == 0 or (bool(value) and isinstance(value[0], list) and (
                depth == 1 or (bool(value[0]) and isinstance(value[0][0], list)))))
        if is_batch and len(value) > limit:
            raise ValueError(f"{name} holds a batch of {len(value)} prompts, more than the "
                             f"server's limit of {limit} (--max-batch-size).")


def _check_nested(value: Any, name: str, ok: Any, kind: str, depth: int) -> None:
    """Raises ValueError at the first leaf of a list nested up to ``depth`` levels that is not
    ``ok`` (or a list where a leaf is due). Lists of lists are walked one level deeper."""
    if not isinstance(value, list) or not value:
        return
    nested = isinstance(value[0], list) and depth > 1
    for i, v in enumerate(value):
        if nested:
            if not isinstance(v, list):
                raise ValueError(f"{name}[{i}] must be a list, got {type(v).__name__}.")
            _check_nested(v, f"{name}[{i}]", ok, kind, depth - 1)
        elif not ok(v):
            raise ValueError(f"{name}[{i}] must be {kind}, got {type(v).__name__}.")


def _item(value: Any, i: int, batch_size: int, default: Any) -> Any:
    if value is None:
        return default
    if isinstance(value, list):
        if len(value) != batch_size:
            raise ValueError("The length of per-item options should be equal to the batch size.")
        return default if value[i] is None else value[i]
    return value


def _hidden_states_mode(value: Any) -> str:
    """'' (off), 'full' (true: every prompt vector, then one per decoded token) or 'last'."""
    if value is None or value is False:
        return ""
    if value is True or value == "full":
        return "full"
    if value == "last":
        return "last"
    raise ValueError(f"return_hidden_states must be a boolean, 'full' or 'last', got {value!r}.")


def _token_ids_item(value: Any, i: int, batch_size: int) -> list[int] | None:
    if value is None or len(value) == 0:
        return None
    if isinstance(value[0], list):
        if len(value) != batch_size:
            raise ValueError("The length of token_ids_logprob should be equal to the batch size.")
        return list(value[i])
    return list(value)


# Fields of SGLang's /encode that this server does not implement yet (a 400 when set).
EMBEDDING_UNSUPPORTED_FIELDS = {
    "image_data": "image inputs to embedding models (images are served by /generate)",
    "video_data": "video inputs",
    "audio_data": "audio inputs",
    "lora_path": "LoRA adapters",
    "priority": "priority scheduling",
}
IS_EMBEDDING_NEEDED = (
    "This model does not appear to be an embedding model by default. "
    "Please add `--is-embedding` when launching the server or try another model."
)
IS_GENERATION_NEEDED = (
    "This model is served as an embedding model (--is-embedding): it does not generate text. "
    "Use /encode or /v1/embeddings, or launch the server without `--is-embedding`."
)


class EmbeddingReqInput(BaseModel):
    """The /encode body (also what /v1/embeddings is translated into)."""

    model_config = ConfigDict(extra="ignore")

    text: Optional[Union[list[str], str, list[list[str]]]] = None
    input_ids: Optional[TokenIds] = None
    rid: Optional[Union[list[str], str]] = None
    dimensions: Optional[int] = None
    sampling_params: Optional[Any] = None  # accepted and ignored, as in SGLang
    log_metrics: bool = True
    # Not supported yet (EMBEDDING_UNSUPPORTED_FIELDS): declared so that setting one is a 400.
    image_data: Optional[Any] = None
    video_data: Optional[Any] = None
    audio_data: Optional[Any] = None
    lora_path: Optional[Any] = None
    priority: Optional[Any] = None
    is_cross_encoder_request: bool = False  # text holds [query, document] pairs

    @model_validator(mode="before")
    @classmethod
    def _check_large_lists(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict):
            limit = (info.context or {}).get("max_batch_size")
            if limit is not None:
                _check_batch_size(data, limit)
            _check_nested(data.get("input_ids"), "input_ids", _is_int, "an integer", depth=2)
            text = data.get("text")
            if isinstance(text, list):
                if text and isinstance(text[0], list):  # cross-encoder pairs
                    for i, pair in enumerate(text):
                        if not (isinstance(pair, list) and len(pair) == 2
                                and all(isinstance(t, str) for t in pair)):
                            raise ValueError(f"text[{i}] must be a [query, document] pair of "
                                             "two strings.")
                else:
                    _check_nested(text, "text", lambda v: isinstance(v, str), "a string",
                                  depth=1)
        return data

    @property
    def is_pairs(self) -> bool:
        """Whether ``text`` holds cross-encoder [query, document] pairs."""
        return isinstance(self.text, list) and bool(self.text) and isinstance(self.text[0], list)

    def unsupported_fields(self) -> list[str]:
        return [n for n in EMBEDDING_UNSUPPORTED_FIELDS if _is_set(getattr(self, n))]

    def normalize(self) -> tuple[list[SingleGenerateReq], bool]:
        """One item per input (text or token ids) and whether the reply is a list."""
        if self.text is None and self.input_ids is None:
            raise ValueError("Either text or input_ids should be provided.")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError("Requested dimensions must be greater than 0")
        if self.is_cross_encoder_request and not self.is_pairs:
            raise ValueError("A cross-encoder request (is_cross_encoder_request) takes text as "
                             "[[query, document], ...] pairs.")
        if self.is_pairs:
            pairs = self.text or []
            rids = self._rids(len(pairs), True)
            return [SingleGenerateReq(rid=rids[i], text=q, text_pair=d, index=i, prompt_index=i)
                    for i, (q, d) in enumerate(pairs)], True
        if self.input_ids is not None:
            ids = self.input_ids
            is_batch = bool(ids) and isinstance(ids[0], list)
            items = [list(i) for i in ids] if is_batch else [list(ids)]
            if not ids or any(len(i) == 0 for i in items):
                raise ValueError("input_ids cannot be empty.")
            prompts = [{"input_ids": i} for i in items]
        else:
            is_batch = isinstance(self.text, list)
            texts = self.text if is_batch else [self.text]
            if is_batch and not texts:
                raise ValueError("Either text or input_ids should be provided.")
            prompts = [{"text": t} for t in texts]
        rids = self._rids(len(prompts), is_batch)
        return [
            SingleGenerateReq(rid=rids[i], text=p.get("text"), input_ids=p.get("input_ids"),
                              index=i, prompt_index=i)
            for i, p in enumerate(prompts)
        ], is_batch

    def _rids(self, count: int, is_batch: bool) -> list[str]:
        if self.rid is None:
            return [uuid.uuid4().hex for _ in range(count)]
        if isinstance(self.rid, str):
            if is_batch:
                raise ValueError("The rid should be a list for batch requests.")
            return [self.rid]
        if len(self.rid) != count:
            raise ValueError("The length of rid should be equal to the batch size.")
        return list(self.rid)


class LoadLoRAAdapterReqInput(BaseModel):
    """The /load_lora_adapter body: a PEFT adapter folder served under ``lora_name``."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str
    lora_path: str
    pinned: bool = False  # refused when true: adapters are never pinned to a slot


class UnloadLoRAAdapterReqInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str


class UpdateWeightFromDiskReqInput(BaseModel):
    """The /update_weights_from_disk body (contract 2.6)."""

    model_config = ConfigDict(extra="ignore")

    model_path: str
    load_format: Optional[str] = None
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    flush_cache: bool = True
    # Newer SGLang fields: the old GPU memory is always released and CUDA graphs always captured
    # again, so torch_empty_cache and recapture_cuda_graph are accepted either way; the others
    # are refused when set (WEIGHT_UPDATE_UNSUPPORTED).
    torch_empty_cache: bool = False
    recapture_cuda_graph: bool = False
    is_async: bool = False
    keep_pause: bool = False
    token_step: Optional[int] = None
    manifest: Optional[Any] = None

    def check(self, load_formats: tuple[str, ...]) -> None:
        """ValueError naming the first field this server cannot honour."""
        if not self.model_path.strip() or len(self.model_path) > 4096:
            raise ValueError("model_path must be a non-empty path or model name of at most 4096 "
                             "characters.")
        if self.load_format is not None and self.load_format not in load_formats:
            raise ValueError(f"load_format must be one of {', '.join(load_formats)}, got "
                             f"{self.load_format!r}.")
        if self.weight_version is not None and len(self.weight_version) > 256:
            raise ValueError("weight_version must be at most 256 characters.")
        for name, needs in WEIGHT_UPDATE_UNSUPPORTED.items():
            value = getattr(self, name)
            if value not in (None, False):
                raise ValueError(f"{name} is not supported by this server yet: it needs {needs}. "
                                 "Remove the field.")


WEIGHT_UPDATE_UNSUPPORTED = {
    "is_async": "asynchronous weight loading",
    "keep_pause": "pause/continue generation",
    "token_step": "step-wise weight loading",
    "manifest": "manifest-driven weight loading",
}


class AbortReqInput(BaseModel):
    """The /abort_request body."""

    model_config = ConfigDict(extra="ignore")

    rid: str = ""
    abort_all: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None


class TokenizeReqInput(BaseModel):
    """The /tokenize body: a prompt (or several), or chat messages rendered by the template."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    prompt: Optional[Union[str, list[str]]] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("Exactly one of 'prompt' or 'messages' must be provided.")

    def texts(self) -> list[str]:
        """Every string the tokenizer will see (for the size check)."""
        if self.messages is not None:
            return [str(m.content) for m in self.messages if m.content is not None]
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt or [])

    def chat(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages or []]


class DetokenizeReqInput(BaseModel):
    """The /detokenize body: token ids, or a list of token-id lists."""

    model_config = ConfigDict(extra="ignore")

    tokens: TokenIds
    skip_special_tokens: bool = True

    @model_validator(mode="before")
    @classmethod
    def _check_large_lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _check_nested(data.get("tokens"), "tokens", _is_int, "an integer", depth=2)
        return data

    def is_batch(self) -> bool:
        return _one_or_batch(self.tokens) == "batch"

    def token_lists(self) -> list[list[int]]:
        return list(self.tokens) if self.is_batch() else [self.tokens]


@dataclasses.dataclass(kw_only=True)
class SingleGenerateReq:
    """One generation (one prompt, one sample) as the tokenizer manager handles it."""

    rid: str
    text: str | None = None
    text_pair: str | None = None  # a cross-encoder's document (``text`` is the query)
    input_ids: list[int] | None = None
    input_embeds: list[list[float]] | None = None
    image_data: list[Any] | None = None  # this prompt's images, in prompt order
    lora_path: str | None = None  # the LoRA adapter's name (None: the base model)
    sampling_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    token_ids_logprob: list[int] | None = None
    return_text_in_logprobs: bool = False
    return_hidden_states: str = ""  # '' (off), 'full' or 'last'
    custom_logit_processor: str | None = None
    stream: bool = False
    index: int = 0  # position in the reply's flat list
    prompt_index: int = 0  # the prompt it samples (n > 1: several items share one)
    parallel_sample_num: int = 1


# ---- HTTP process -> engine process ------------------------------------------------------------
@dataclasses.dataclass
class TokenizedGenerateReq:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    token_ids_logprob: list[int] | None = None
    input_embeds: list[list[float]] | None = None
    return_hidden_states: str = ""  # '' (off), 'full' or 'last'
    custom_logit_processor: str | None = None
    # Radix-cache namespace: requests only share cached prefixes within one namespace
    # (input_embeds requests get one per embedding content, their token ids being placeholders).
    cache_namespace: str = ""
    # An embedding request (--is-embedding servers): keep this many leading features (None: all).
    dimensions: int | None = None
    # A cross-encoder's (query, document) pair: the segment of each token (None: all 0).
    token_type_ids: list[int] | None = None
    # A vision-language prompt's images (spans in input_ids, pixels or embeddings, M-RoPE).
    images: ImageInputs | None = None
    lora_name: str | None = None  # the LoRA adapter it runs with (None: the base model)


@dataclasses.dataclass
class LoadLoraAdapterReq:
    lora_name: str
    lora_path: str


@dataclasses.dataclass
class UnloadLoraAdapterReq:
    lora_name: str


@dataclasses.dataclass
class LoraAdapterResp:
    """The engine's reply to a load / unload: the adapters served afterwards (name -> path)."""

    success: bool
    error_message: str | None
    loaded_adapters: dict[str, str]


@dataclasses.dataclass
class AbortReq:
    rid: str = ""
    abort_all: bool = False
    message: str = "Aborted"


@dataclasses.dataclass
class FlushCacheReq:
    pass


@dataclasses.dataclass
class GetInternalStateReq:
    pass


@dataclasses.dataclass
class ShutdownReq:
    pass


@dataclasses.dataclass
class UpdateWeightsFromDiskReq:
    """Swap in the weights of another checkpoint of the same model (engine idle)."""

    model_path: str
    load_format: str | None = None
    flush_cache: bool = True


@dataclasses.dataclass
class ExpertDistributionReq:
    action: str  # "start", "stop" or "dump"


# ---- engine process -> HTTP process ------------------------------------------------------------
@dataclasses.dataclass
class ReqOutput:
    """New tokens of one request in one engine step (and its final state when finished)."""

    rid: str
    new_token_ids: list[int]
    finish_reason: FinishReason | None
    prompt_tokens: int
    cached_tokens: int
    num_retractions: int
    output_token_logprobs: list[tuple[float, int]] | None = None
    output_top_logprobs: list[list[tuple[float, int]]] | None = None
    output_token_ids_logprobs: list[list[tuple[float, int]]] | None = None
    input_token_logprobs: list[tuple[float | None, int]] | None = None
    input_top_logprobs: list[list[tuple[float, int]] | None] | None = None
    input_token_ids_logprobs: list[list[tuple[float, int]] | None] | None = None
    hidden_states: list[Any] | None = None
    # The pooled vector of an embedding request (float32 numpy array: pickled and serialised to
    # JSON without a per-float Python object).
    embedding: Any = None


@dataclasses.dataclass
class BatchTokenOut:
    outputs: list[ReqOutput]


@dataclasses.dataclass
class RequestError:
    """The engine refused a request (bad input found there): HTTP 400 with this message."""

    rid: str
    message: str
    status_code: int = 400


@dataclasses.dataclass
class FlushCacheResp:
    success: bool


@dataclasses.dataclass
class InternalStateResp:
    state: dict[str, Any]


WEIGHTS_BUSY = ("Failed to update weights: requests are still running (the update waits for "
                "them, or aborts them with abort_all_requests).")


@dataclasses.dataclass
class UpdateWeightsFromDiskResp:
    success: bool
    message: str


@dataclasses.dataclass
class ExpertDistributionResp:
    success: bool
    message: str  # the error, or where a dump was written


@dataclasses.dataclass
class EngineReady:
    """First message of the engine process: what the HTTP side needs to know about the model."""

    max_total_num_tokens: int
    max_req_input_len: int
    max_sequence_len: int  # min(context length, KV pool): prompt + output tokens at most
    context_length: int
    vocab_size: int
    hidden_size: int
    eos_token_ids: list[int]
    max_running_requests: int
    architectures: list[str]
    model_type: str
    device: str
    dtype: str
    memory_usage: dict[str, float]
    generation_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    is_embedding: bool = False  # an --is-embedding engine: /encode, no generation
    matryoshka: bool = False  # the embedding model accepts ``dimensions``
    id2label: dict[int, str] = dataclasses.field(default_factory=dict)  # classification models
    image_understanding: bool = False  # a vision-language model: /generate takes image_data
    lora_enabled: bool = False  # --enable-lora: requests may name an adapter (lora_path)
    lora_adapters: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> path


def _image_items(image_data: Any, batch_size: int, is_batch: bool) -> list[list[Any] | None]:
    """Each prompt's list of images (None: no image). One prompt: an image or a list of images;
    a batch: a list with one entry per prompt, each an image, a list of images or null."""
    if not _is_set(image_data):
        return [None] * batch_size

    def one(entry: Any) -> list[Any] | None:
        if entry is None or (isinstance(entry, list) and not entry):
            return None
        return list(entry) if isinstance(entry, (list, tuple)) else [entry]

    if not is_batch:
        return [one(image_data)]
    if not isinstance(image_data, list) or len(image_data) != batch_size:
        raise ValueError("The length of image_data should be equal to the batch size.")
    return [one(entry) for entry in image_data]


MAX_LORA_NAME_CHARS = 256


def _lora_items(lora_path: Any, batch_size: int, is_batch: bool) -> list[str | None]:
    """Each prompt's adapter name: one name (or null) for every prompt, or a list with one name
    or null per prompt."""
    def one(entry: Any) -> str | None:
        if entry is None:
            return None
        if not isinstance(entry, str) or not entry or len(entry) > MAX_LORA_NAME_CHARS:
            raise ValueError(f"lora_path must be an adapter name (a non-empty string of at most "
                             f"{MAX_LORA_NAME_CHARS} characters) or null, got {entry!r:.80}.")
        return entry

    if isinstance(lora_path, list):
        if not is_batch and len(lora_path) == 1:
            return [one(lora_path[0])]
        if len(lora_path) != batch_size:
            raise ValueError(f"The length of lora_path ({len(lora_path)}) should be equal to "
                             f"the batch size ({batch_size}).")
        return [one(entry) for entry in lora_path]
    return [one(lora_path)] * batch_size
