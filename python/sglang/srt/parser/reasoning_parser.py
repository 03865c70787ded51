"""Reasoning (``<think>...</think>``) in model output: the chat route passes the generated text in
and gets back ``reasoning_content`` and ``content`` (whole, or as streaming deltas).

Model types (``--reasoning-parser``):

* ``qwen3``: reasoning only inside a ``<think>`` block; output without one is all content (unless
  ``force_reasoning``, e.g. when the template opened the block itself);
* ``deepseek-r1``: the template already opened ``<think>``, so the output is reasoning until
  ``</think>`` (a leading ``<think>`` the model writes anyway is dropped).

Only the first block counts. Text before ``<think>`` is content (whitespace-only: dropped); the
whitespace just inside the tags and right after ``</think>`` is stripped (SGLang strips it too).
Reasoning never closed (output cut short) is reasoning to the end. Streaming holds back what is
still undecided (a partial tag such as ``<thi`` or ``</thin``, whitespace that may precede a tag),
so the joined deltas equal the non-streaming result. ``stream_reasoning=False``: the reasoning
is sent in one piece when its block closes, or by ``flush()`` at the end.
"""

from __future__ import annotations

START, END = "<think>", "</think>"
_WS = " \t\n\r"
# model type -> force_reasoning default
REASONING_PARSERS: dict[str, bool] = {"qwen3": False, "deepseek-r1": True}

_BEFORE, _REASONING, _AFTER = "before", "reasoning", "after"


class ReasoningParser:
    """Splits model output into reasoning and content. One instance per choice of one request:
    ``parse_non_stream`` once, or ``parse_stream_chunk`` per text delta then ``flush``."""

    def __init__(self, model_type: str, stream_reasoning: bool = True,
                 force_reasoning: bool | None = None) -> None:
        if model_type not in REASONING_PARSERS:
            raise ValueError(f"Unknown reasoning parser {model_type!r}; "
                             f"expected one of {', '.join(REASONING_PARSERS)}")
        self.model_type = model_type
        self.stream_reasoning = stream_reasoning
        self.force_reasoning = (REASONING_PARSERS[model_type] if force_reasoning is None
                                else force_reasoning)
        self._state = _REASONING if self.force_reasoning else _BEFORE
        self._buf = ""  # undecided text of the current state
        self._opening = self.force_reasoning  # reasoning that may still start with <think>
        self._strip = self.force_reasoning  # drop leading whitespace of the current part
        self._content_sent = False
        self._reasoning_seen = False
        self._held_reasoning = ""  # stream_reasoning=False: reasoning not sent yet

    def parse_non_stream(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None when there is no think block, content) of a complete output."""
        reasoning, content = self.parse_stream_chunk(text)
        more_reasoning, more_content = self.flush()
        reasoning += more_reasoning
        if not (self._reasoning_seen or reasoning):
            return None, content + more_content
        return reasoning, content + more_content

    def parse_stream_chunk(self, delta: str) -> tuple[str, str]:
        """(reasoning delta, content delta) for the next piece of output."""
        self._buf += delta
        reasoning, content = [], []
        while True:
            state = self._state
            if state == _BEFORE:
                self._before(content)
            elif state == _REASONING:
                self._reasoning(reasoning)
            else:
                self._after(content)
            if self._state == state:
                break
        return self._reasoning_out("".join(reasoning)), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What was held back (partial tags, whitespace, unsent reasoning) once output ended."""
        buf, self._buf = self._buf, ""
        if self._state == _BEFORE:
            return "", buf
        if self._state == _AFTER:
            return "", "" if self._strip else buf
        if self._strip:
            buf = buf.lstrip(_WS)
        reasoning = self._held_reasoning + buf.rstrip(_WS)
        self._held_reasoning = ""
        return reasoning, ""

    # ---- states ---------------------------------------------------------------------------------
    def _before(self, content: list[str]) -> None:
        """No block yet: content until ``<think>``; hold a partial tag and whitespace-only text
        at the very start (it is dropped if a block follows)."""
        idx = self._buf.find(START)
        if idx >= 0:
            head = self._buf[:idx]
            if head.strip(_WS) or self._content_sent:
                content.append(head)
            self._enter_reasoning(self._buf[idx + len(START):])
            return
        keep = _partial(self._buf, START)
        ready = self._buf[:len(self._buf) - keep]
        if not self._content_sent and not ready.strip(_WS):
            return
        content.append(ready)
        self._content_sent = True
        self._buf = self._buf[len(ready):]

    def _enter_reasoning(self, rest: str) -> None:
        self._state, self._buf = _REASONING, rest
        self._strip, self._opening, self._reasoning_seen = True, False, True

    def _reasoning(self, reasoning: list[str]) -> None:
        while self._strip:
            self._buf = self._buf.lstrip(_WS)
            if not self._buf:
                return
            if self._opening:  # a forced block the model opened again: drop that <think>
                if START.startswith(self._buf) and self._buf != START:
                    return
                self._opening = False
                if self._buf.startswith(START):
                    self._buf = self._buf[len(START):]
                    continue
            self._strip = False
        self._reasoning_seen = True
        idx = self._buf.find(END)
        if idx >= 0:
            reasoning.append(self._buf[:idx].rstrip(_WS))
            self._state, self._buf, self._strip = _AFTER, self._buf[idx + len(END):], True
            return
        keep = _partial(self._buf, END)
        ready = self._buf[:len(self._buf) - keep].rstrip(_WS)
        reasoning.append(ready)
        self._buf = self._buf[len(ready):]

    def _after(self, content: list[str]) -> None:
        if self._strip:
            self._buf = self._buf.lstrip(_WS)
            if not self._buf:
                return
            self._strip = False
        content.append(self._buf)
        self._content_sent = True
        self._buf = ""

    def _reasoning_out(self, piece: str) -> str:
        """stream_reasoning=False: hold reasoning until its block closes."""
        if self.stream_reasoning:
            return piece
        self._held_reasoning += piece
        if self._state == _REASONING:
            return ""
        out, self._held_reasoning = self._held_reasoning, ""
        return out


def _partial(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
