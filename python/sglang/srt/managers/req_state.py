"""The HTTP side's state of one request (one prompt, one sample) while the engine runs it.

Created by the tokenizer manager when a request is submitted; filled by the engine's per-step
outputs (token ids, logprobs, hidden states; text by the incremental detokenizer); read by the
response builder for streamed chunks and the final reply. ``finish_reason`` set means finished;
a finish reason that ``is_error`` means the request failed and its reply is that error.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from sglang.srt.managers.detokenizer import IncrementalDetokenizer
from sglang.srt.managers.finish_reason import FinishReason
from sglang.srt.managers.io_struct import SingleGenerateReq
from sglang.srt.sampling.sampling_params import SamplingParams


class RequestFailed(Exception):
    """A request ended with an error status (raised to the route that waits for it)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    @classmethod
    def of(cls, finish: FinishReason) -> RequestFailed:
        return cls(finish.message or "Aborted", finish.status_code or 500)


@dataclasses.dataclass
class ReqState:
    single: SingleGenerateReq
    sampling: SamplingParams
    prompt_tokens: int
    detok: IncrementalDetokenizer | None
    created: float
    event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    output_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0
    num_retractions: int = 0
    output_token_logprobs: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    output_top_logprobs: list[Any] = dataclasses.field(default_factory=list)
    output_token_ids_logprobs: list[Any] = dataclasses.field(default_factory=list)
    input_token_logprobs: list[Any] = dataclasses.field(default_factory=list)
    input_top_logprobs: list[Any] = dataclasses.field(default_factory=list)
    input_token_ids_logprobs: list[Any] = dataclasses.field(default_factory=list)
    hidden_states: list[Any] = dataclasses.field(default_factory=list)
    embedding: Any = None  # an embedding request's pooled vector (float32 numpy array)
    first_token_time: float | None = None
    last_token_time: float | None = None
    internal: bool = False  # the server's own (n > 1 prefix warm-up): not a user's request

    @property
    def rid(self) -> str:
        return self.single.rid

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def failed(self) -> bool:
        return self.finish_reason is not None and self.finish_reason.is_error

    def fail(self, message: str, status_code: int) -> None:
        """Ends the request with an error (no-op once finished)."""
        if self.finish_reason is None:
            self.finish_reason = FinishReason.error(message, status_code)
        self.event.set()

    def raise_if_failed(self) -> None:
        if self.failed:
            raise RequestFailed.of(self.finish_reason)
