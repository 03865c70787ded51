"""Why a request ended: the one typed finish reason of the engine, the HTTP side and the responses.

Built in the engine process (``engine_core``: the core's token-level reasons, stop strings and
regexes, grammars, aborts, failures) and by the tokenizer manager for requests that fail outside the
engine (engine death, a refusal); pickled over ZMQ; rendered into the contract's JSON
(``{"type": "stop", "matched": ...}``, ``{"type": "length", "length": n}``,
``{"type": "abort", "message", "status_code", "err_type"}``) only by ``to_json``. A request *failed*
(``is_error``) when it was aborted with an HTTP status: the reply is then an error, not a result.
"""

from __future__ import annotations

import dataclasses
import enum


class FinishKind(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclasses.dataclass(frozen=True)
class FinishReason:
    kind: FinishKind
    matched_token: int | None = None  # STOP on a token (EOS, stop_token_ids, a grammar's end)
    matched_text: str | None = None  # STOP on a stop string or a stop regex
    length: int | None = None  # LENGTH: the budget reached
    message: str | None = None  # ABORT
    status_code: int | None = None  # ABORT: an HTTP status when the request failed
    err_type: str | None = None

    # ---- constructors ----------------------------------------------------------------------------
    @classmethod
    def stop_token(cls, token: int) -> FinishReason:
        return cls(FinishKind.STOP, matched_token=int(token))

    @classmethod
    def stop_text(cls, text: str) -> FinishReason:
        return cls(FinishKind.STOP, matched_text=text)

    @classmethod
    def length_limit(cls, length: int) -> FinishReason:
        return cls(FinishKind.LENGTH, length=int(length))

    @classmethod
    def abort(cls, message: str = "Aborted") -> FinishReason:
        """Ended on request (abort_request, a client that went away): not an error."""
        return cls(FinishKind.ABORT, message=message)

    @classmethod
    def error(cls, message: str, status_code: int = 400) -> FinishReason:
        """The request failed: 4xx for a request the server refuses, 5xx for the server's fault."""
        err_type = "BadRequest" if status_code < 500 else (
            "ServiceUnavailable" if status_code == 503 else "InternalServerError")
        return cls(FinishKind.ABORT, message=message, status_code=int(status_code),
                   err_type=err_type)

    # ---- views -----------------------------------------------------------------------------------
    @property
    def is_error(self) -> bool:
        return self.kind is FinishKind.ABORT and self.status_code is not None

    @property
    def stop_string(self) -> str | None:
        """The matched stop string (or regex match) that the text is trimmed at, if any."""
        return self.matched_text if self.kind is FinishKind.STOP else None

    @property
    def stopped_on_token(self) -> bool:
        return self.kind is FinishKind.STOP and self.matched_token is not None

    def to_json(self) -> dict:
        if self.kind is FinishKind.STOP:
            matched = self.matched_token if self.matched_token is not None else self.matched_text
            return {"type": "stop", "matched": matched}
        if self.kind is FinishKind.LENGTH:
            return {"type": "length", "length": self.length}
        return {"type": "abort", "message": self.message or "Aborted",
                "status_code": self.status_code, "err_type": self.err_type}
