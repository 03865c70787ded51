"""Custom logit processors: user code that edits a batch of logit rows before sampling.

A client subclasses ``CustomLogitProcessor``, serializes the class with ``to_str()`` (the class
pickled with dill, hex-encoded, inside ``{"callable": ...}``), and sends the string as the
request's ``custom_logit_processor``; each request's ``sampling_params.custom_params`` reaches the
processor as its row's dict, with ``"__req__"`` added (a read-only view of the request: ``rid``,
``origin_input_ids``, ``output_ids``). The engine groups the rows of a step by processor string and
calls each processor once on its rows (``apply_custom_logit_processors``), after penalties, bans and
``logit_bias`` and before temperature / top-k / top-p / min-p.

Deserializing a processor runs code the client sent: the server only accepts them when started
with ``--enable-custom-logit-processor``.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

REQ_KEY = "__req__"


class CustomLogitProcessor(ABC):
    """Subclass and implement ``__call__``; the class (not an instance) is what is sent."""

    @abstractmethod
    def __call__(
        self, logits: torch.Tensor, custom_param_list: list[dict[str, Any]] | None = None
    ) -> torch.Tensor:
        """``logits``: [rows, vocab] of the rows using this processor; returns the same shape
        (editing in place is allowed). ``custom_param_list[i]`` belongs to row ``i``."""

    @classmethod
    def to_str(cls) -> str:
        import dill

        return json.dumps({"callable": dill.dumps(cls).hex()})

    @classmethod
    def from_str(cls, json_str: str) -> CustomLogitProcessor:
        return _from_str(json_str)


@functools.lru_cache(maxsize=64)
def _from_str(json_str: str) -> CustomLogitProcessor:
    import dill

    data = json.loads(json_str)
    processor_cls = dill.loads(bytes.fromhex(data["callable"]))
    return processor_cls()


def load_custom_logit_processor(json_str: str) -> CustomLogitProcessor:
    """The processor instance of a serialized string; ValueError (HTTP 400) when it is not one."""
    try:
        processor = _from_str(json_str)
    except Exception as exc:  # anything malformed: bad JSON, bad hex, unpicklable, ctor error
        raise ValueError(f"Invalid custom_logit_processor: {type(exc).__name__}: {exc}") from exc
    if not callable(processor):
        raise ValueError("Invalid custom_logit_processor: the deserialized object is not callable.")
    return processor


class DisallowedTokensLogitsProcessor(CustomLogitProcessor):
    """Forbids the tokens of ``custom_params["token_ids"]`` (per row)."""

    def __call__(
        self, logits: torch.Tensor, custom_param_list: list[dict[str, Any]] | None = None
    ) -> torch.Tensor:
        for i, params in enumerate(custom_param_list or []):
            token_ids = (params or {}).get("token_ids")
            if token_ids:
                logits[i, torch.as_tensor(token_ids, dtype=torch.long)] = -float("inf")
        return logits


class ReqView:
    """What a processor may read of its request (``custom_params["__req__"]``)."""

    __slots__ = ("rid", "origin_input_ids", "output_ids")

    def __init__(self, rid: str, origin_input_ids: list[int], output_ids: list[int]) -> None:
        self.rid = rid
        self.origin_input_ids = origin_input_ids
        self.output_ids = output_ids  # the engine's live list: grows as tokens are generated

    def __repr__(self) -> str:
        return f"ReqView(rid={self.rid!r}, prompt={len(self.origin_input_ids)}, " \
               f"output={len(self.output_ids)})"


class CustomProcessorError(Exception):
    """A processor raised on some rows; ``rows`` are their indices in the sampled batch."""

    def __init__(self, rows: list[int], message: str) -> None:
        super().__init__(message)
        self.rows = rows
        self.message = message


def apply_custom_logit_processors(
    logits: torch.Tensor,
    processors: Sequence[str | None],
    params: Sequence[dict[str, Any] | None],
) -> list[CustomProcessorError]:
    """Applies each row's processor in place (rows grouped by processor string).

    ``processors[i]`` / ``params[i]``: row i's serialized processor (or None) and its
    ``custom_params`` (with ``__req__``). A group whose processor raises or returns a wrong shape is
    left as it was and reported in the returned list; the other groups are still applied.
    """
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(processors):
        if p:
            groups.setdefault(p, []).append(i)
    errors: list[CustomProcessorError] = []
    for processor_str, rows in groups.items():
        try:
            processor = load_custom_logit_processor(processor_str)
            index = torch.as_tensor(rows, dtype=torch.long, device=logits.device)
            with torch.inference_mode():
                sub = logits.index_select(0, index)
                result = processor(sub, [params[i] or {} for i in rows])
            if result is None:
                result = sub
            if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(sub.shape):
                raise ValueError(f"the processor returned {type(result).__name__} of shape "
                                 f"{tuple(getattr(result, 'shape', ()))}, expected "
                                 f"{tuple(sub.shape)}")
            with torch.inference_mode():  # the engine's logits are inference tensors
                logits.index_copy_(0, index, result.to(logits.dtype))
        except Exception as exc:
            errors.append(CustomProcessorError(
                rows, f"The custom logit processor failed: {type(exc).__name__}: {exc}"))
    return errors
