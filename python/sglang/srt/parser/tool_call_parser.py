"""Tool calls in model output: the text the chat route gets back from the engine goes in, normal
content and tool calls come out (whole, or as streaming deltas).

Formats (``--tool-call-parser``):

* ``hermes``, ``qwen25``: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, one
  or more blocks;
* ``llama3``: a JSON object ``{"name": ..., "parameters": {...}}`` after ``<|python_tag|>`` or
  at the start of the output, several separated by ``;``;
* ``mistral``: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``.

Every format accepts ``arguments`` or ``parameters``. One streaming engine does all the work; the
non-streaming parse feeds it the whole text, so both agree by construction. A call's
``arguments`` is the exact source text of its arguments value (``"{}"`` when absent); streamed,
its pieces concatenate to it. The name is sent as soon as it is complete, then the arguments text
as it grows. Text that might be the start of a call marker is held back until decided; the
whitespace between normal text and a call is dropped.

Calls to names that are not in ``tools`` are dropped (as SGLang does), and so are malformed ones
(bad JSON): a streamed call that turns out malformed after its name was sent cannot be taken
back, so only the non-streaming parse drops it. Output cut inside a call (``max_tokens``): the
stream has sent what it had; the non-streaming parse drops the unfinished call.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from sglang.srt.parser.json_scanner import JsonScanner

_WS = " \t\n\r"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    name: str | None  # only on a call's first delta
    arguments: str


@dataclass(frozen=True)
class CallFormat:
    """How calls are framed in the output of a model family."""

    markers: tuple[str, ...] = ()  # a call (or list of calls) starts after one of these
    end_marker: str | None = None  # hermes: each call is closed by it
    separator: str | None = None  # llama3: calls separated by it
    array: bool = False  # mistral / forced: the calls are the items of a JSON array
    bare_start: str | None = None  # the output may start with this char to open calls directly


FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat(markers=("<tool_call>",), end_marker="</tool_call>"),
    "qwen25": CallFormat(markers=("<tool_call>",), end_marker="</tool_call>"),
    "llama3": CallFormat(markers=("<|python_tag|>",), separator=";", bare_start="{"),
    "mistral": CallFormat(markers=("[TOOL_CALLS]",), array=True),
}
TOOL_CALL_PARSERS = tuple(FORMATS)
# The array of calls a forced tool choice ("required") makes the model write.
JSON_ARRAY_FORMAT = CallFormat(array=True, bare_start="[")


def tool_names(tools: list[dict] | None) -> set[str]:
    """The function names of OpenAI tool dicts (``{"type": "function", "function": {...}}``)."""
    names = set()
    for tool in tools or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


@dataclass
class _Call:
    """One call being scanned: where it starts, its scanner, what was sent of it."""

    start: int
    bare: bool = False  # opened the output without a marker (llama3): may be plain JSON
    scanner: JsonScanner = field(default_factory=JsonScanner)
    index: int | None = None  # set when its name is sent
    dropped: bool = False  # unknown name: scanned to its end, never sent
    args_key: str | None = None
    args_sent: int = 0


# Engine states
_TEXT, _OPEN, _CALL, _AFTER, _SKIP, _DEAD = "text", "open", "call", "after", "skip", "dead"


class ToolCallParser:
    """Splits model output into content and tool calls. One instance per choice of one request:
    ``parse_non_stream`` once, or ``parse_stream_chunk`` per text delta then ``flush``."""

    def __init__(self, kind: str, tools: list[dict] | None,
                 fmt: CallFormat | None = None) -> None:
        if fmt is None:
            if kind not in FORMATS:
                raise ValueError(f"Unknown tool call parser {kind!r}; "
                                 f"expected one of {', '.join(TOOL_CALL_PARSERS)}")
            fmt = FORMATS[kind]
        self._fmt = fmt
        self._names = tool_names(tools)
        self._text = ""
        self._pos = 0  # next char to read
        self._state = _TEXT
        self._sent = 0  # TEXT: content sent (or dropped) up to here
        self._skip_ws = False  # TEXT: drop leading whitespace (the segment follows a call)
        self._seen_content = False
        self._in_array = False
        self._bare = False  # the calls opened without a marker
        self._call: _Call | None = None
        self._count = 0  # calls sent
        self._bad: set[int] = set()  # indices of sent calls that turned out malformed/unfinished
        self._out_text: list[str] = []
        self._out_calls: list[ToolCallDelta] = []
        self._steps = {_TEXT: self._in_text, _OPEN: self._in_open, _CALL: self._in_call,
                       _AFTER: self._in_after, _SKIP: self._in_skip, _DEAD: self._in_dead}

    # ---- public ---------------------------------------------------------------------------------
    def parse_non_stream(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a complete output; malformed or unfinished calls are dropped."""
        content, deltas = self.parse_stream_chunk(text)
        more, last = self.flush()
        calls: dict[int, list[str]] = {}
        for delta in deltas + last:
            entry = calls.setdefault(delta.index, [delta.name or "", ""])
            entry[1] += delta.arguments
        return content + more, [ToolCall(name, args) for index, (name, args)
                                in sorted(calls.items()) if index not in self._bad]

    def parse_stream_chunk(self, delta: str) -> tuple[str, list[ToolCallDelta]]:
        """(content delta, call deltas) for the next piece of output."""
        self._text += delta
        self._advance(final=False)
        return self._take()

    def flush(self) -> tuple[str, list[ToolCallDelta]]:
        """What was held back, once the output has ended."""
        self._advance(final=True)
        call = self._call
        if self._state == _CALL and call is not None:
            if call.bare and call.index is None and not call.dropped:
                self._plain_json(call)
                self._advance(final=True)
            if self._state == _CALL:
                self._fail_call()
        if self._state == _TEXT:
            self._send_text(len(self._text))
        self._state = _DEAD
        return self._take()

    @property
    def malformed(self) -> set[int]:
        """Indices of sent calls that turned out malformed or unfinished."""
        return set(self._bad)

    # ---- engine ---------------------------------------------------------------------------------
    def _take(self) -> tuple[str, list[ToolCallDelta]]:
        text, calls = "".join(self._out_text), _merge(self._out_calls)
        self._out_text, self._out_calls = [], []
        return text, calls

    def _advance(self, final: bool) -> None:
        """Runs the state machine as far as the text allows."""
        while True:
            before = (self._state, self._pos, self._sent)
            self._steps[self._state](final)
            if (self._state, self._pos, self._sent) == before:
                return

    def _in_dead(self, final: bool) -> None:
        self._pos = len(self._text)

    def _in_text(self, final: bool) -> None:
        text, fmt = self._text, self._fmt
        if fmt.bare_start and not self._seen_content and self._count == 0 and not self._skip_ws:
            head = text[self._sent:].lstrip(_WS)
            if not head:
                return
            if head[0] == fmt.bare_start:
                self._pos = len(text) - len(head)
                self._sent = self._pos
                self._state, self._bare = _OPEN, True
                return
        start, marker = _find_marker(text, self._sent, fmt.markers)
        if marker is not None:
            self._send_text(start, before_call=True)
            self._sent = self._pos = start + len(marker)
            self._state = _OPEN
            return
        if final:
            return
        self._send_text(len(text) - _partial_suffix(text, self._sent, fmt.markers), hold_ws=True)

    def _send_text(self, end: int, before_call: bool = False, hold_ws: bool = False) -> None:
        """Sends ``text[sent:end]`` as content: leading whitespace dropped after a call, trailing
        whitespace dropped before one (and held while undecided)."""
        piece = self._text[self._sent:end]
        if self._skip_ws:
            stripped = piece.lstrip(_WS)
            self._sent += len(piece) - len(stripped)
            piece = stripped
            if not piece:
                self._pos = self._sent
                return
            self._skip_ws = False
        if before_call:
            piece = piece.rstrip(_WS)
            self._sent = end
        elif hold_ws:
            piece = piece.rstrip(_WS)
            self._sent += len(piece)
        else:
            self._sent = end
        self._pos = self._sent
        if piece:
            self._seen_content = True
            self._out_text.append(piece)

    def _in_open(self, final: bool) -> None:
        """After a marker (or separator): whitespace, then ``[`` for arrays, then ``{``."""
        pos = _skip(self._text, self._pos)
        self._pos = pos
        if pos >= len(self._text):
            return
        c = self._text[pos]
        if self._fmt.array and not self._in_array:
            if c != "[":
                self._recover()
                return
            self._in_array = True
            self._pos = pos + 1
            return
        if c != "{":
            self._recover()
            return
        self._call = _Call(start=pos, bare=self._bare and self._count == 0)
        self._state = _CALL

    def _in_call(self, final: bool) -> None:
        call = self._call
        assert call is not None
        self._pos = call.scanner.feed(self._text, self._pos)
        if not call.scanner.error:
            self._send_call(call)
        nameless = call.scanner.done and call.index is None and not call.dropped
        if call.scanner.error or nameless:
            if call.bare and call.index is None and not call.dropped:
                self._plain_json(call)  # e.g. a JSON answer, not a call
                return
            self._fail_call()
            self._recover()
            return
        if call.scanner.done:
            self._state = _AFTER
            self._call = None

    def _plain_json(self, call: _Call) -> None:
        """Output that opened like a call without a marker but is not one: it is content."""
        self._call, self._bare, self._in_array = None, False, False
        self._seen_content = True
        self._sent = self._pos = call.start
        self._skip_ws = False
        self._state = _TEXT

    def _send_call(self, call: _Call) -> None:
        """Sends the call's name once known, then its arguments text as far as scanned."""
        scanner = call.scanner
        if call.dropped:
            return
        if call.index is None:
            span = scanner.members.get("name")
            if span is None or span.end is None:
                return
            name = _string(self._text[span.start:span.end])
            if name is None:
                scanner.error = True
                return
            if name not in self._names:
                logger.warning("Model attempted to call undefined function: %s", name)
                call.dropped = True
                return
            call.index = self._count
            self._count += 1
            self._out_calls.append(ToolCallDelta(call.index, name, ""))
        if call.args_key is None:
            call.args_key = _args_key(scanner)
        if call.args_key is None:
            if scanner.done:
                self._out_calls.append(ToolCallDelta(call.index, None, "{}"))
            return
        span = scanner.members[call.args_key]
        end = span.end if span.end is not None else self._pos
        piece = self._text[span.start + call.args_sent:end]
        if piece:
            call.args_sent += len(piece)
            self._out_calls.append(ToolCallDelta(call.index, None, piece))

    def _fail_call(self) -> None:
        call = self._call
        if call is not None and call.index is not None:
            self._bad.add(call.index)
        self._call = None

    def _in_after(self, final: bool) -> None:
        """After a call's JSON: the end marker, a separator, or the array's comma / close."""
        text, fmt = self._text, self._fmt
        pos = _skip(text, self._pos)
        self._pos = pos
        if pos >= len(text):
            if final:
                self._state = _DEAD
            return
        if fmt.end_marker is not None:
            rest = text[pos:pos + len(fmt.end_marker)]
            if rest == fmt.end_marker:
                self._to_text(pos + len(fmt.end_marker))
            elif not fmt.end_marker.startswith(rest) or final:
                self._recover()
            return
        c = text[pos]
        if fmt.array and c in ",]":
            self._pos = pos + 1
            if c == "]":
                self._in_array = False
                self._to_text(pos + 1)
            else:
                self._state = _OPEN
            return
        if fmt.separator is not None and c == fmt.separator:
            self._pos = pos + 1
            self._state = _OPEN
            return
        if fmt.array:
            self._recover()
        else:
            self._to_text(pos)

    def _to_text(self, pos: int) -> None:
        self._sent = self._pos = pos
        self._skip_ws = True
        self._state = _TEXT

    def _recover(self) -> None:
        """Malformed call markup: with an end marker skip past it, else drop the rest."""
        self._in_array = False
        self._state = _SKIP if self._fmt.end_marker is not None else _DEAD

    def _in_skip(self, final: bool) -> None:
        end = self._text.find(self._fmt.end_marker, self._pos)
        if end < 0:
            self._pos = max(self._pos, len(self._text) - len(self._fmt.end_marker) + 1)
            return
        self._to_text(end + len(self._fmt.end_marker))


# ---- helpers ---------------------------------------------------------------------------------------
def _find_marker(text: str, start: int, markers: tuple[str, ...]) -> tuple[int, str | None]:
    best, found = -1, None
    for marker in markers:
        idx = text.find(marker, start)
        if idx >= 0 and (best < 0 or idx < best):
            best, found = idx, marker
    return best, found


def _partial_suffix(text: str, start: int, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text[start:]`` that is a proper prefix of a marker."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text) - start), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _string(raw: str) -> str | None:
    value = json.loads(raw)
    return value if isinstance(value, str) else None


def _args_key(scanner: JsonScanner) -> str | None:
    spans = [(span.start, key) for key, span in scanner.members.items()
             if key in ("arguments", "parameters")]
    return min(spans)[1] if spans else None


def _merge(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """Joins consecutive deltas of the same call (the first keeps its name)."""
    merged: list[ToolCallDelta] = []
    for delta in deltas:
        if merged and merged[-1].index == delta.index and delta.name is None:
            last = merged[-1]
            merged[-1] = ToolCallDelta(last.index, last.name, last.arguments + delta.arguments)
        else:
            merged.append(delta)
    return merged
