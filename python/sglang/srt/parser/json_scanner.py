"""An incremental, validating JSON scanner for one value, used by the tool-call parsers.

It is fed characters of a growing text (by absolute position) and says, after each feed, whether
the value is complete, whether it is malformed, and where the members of the top-level object
(``name``, ``arguments``...) start and end. It never builds the value: the parsers slice the text
between those positions, so a streamed member is the exact source text, piece by piece.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_LITERAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null")
_LITERAL_CHARS = frozenset("0123456789+-.eEtrufalsn")
_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_WS = frozenset(" \t\n\r")


@dataclass
class Span:
    """Where a top-level member's value lies in the text: ``end`` is None while it is scanned."""

    start: int
    end: int | None = None


@dataclass
class _Frame:
    kind: str  # "o" (object) or "a" (array)
    expect: str  # "first" (key/value or close), "key", "colon", "value", "next" (comma or close)


@dataclass
class JsonScanner:
    """Scans one JSON value char by char. ``feed`` consumes from ``pos`` until the value ends,
    fails or the text runs out, and returns the next position to read. Mutates itself only."""

    done: bool = False
    error: bool = False
    members: dict[str, Span] = field(default_factory=dict)
    _stack: list[_Frame] = field(default_factory=list)
    _started: bool = False
    _in_string: bool = False
    _string_is_key: bool = False
    _string_start: int = 0
    _escape: int = 0  # 0 none, 1 after a backslash, 2..5 reading \\u hex digits
    _literal_start: int | None = None
    _key: str | None = None

    def feed(self, text: str, pos: int) -> int:
        """Consumes ``text[pos:]``; stops after the value's last char or at the first bad one."""
        while pos < len(text) and not (self.done or self.error):
            if not self._step(text, pos):
                self.error = True
                break
            pos += 1
        return pos

    def in_member(self, key: str) -> bool:
        span = self.members.get(key)
        return span is not None and span.end is None

    # ---- one character ------------------------------------------------------------------------
    def _step(self, text: str, pos: int) -> bool:
        c = text[pos]
        if self._in_string:
            return self._string_char(text, pos, c)
        if self._literal_start is not None:
            if c in _LITERAL_CHARS:
                return True
            literal = text[self._literal_start:pos]
            self._literal_start = None
            if not _LITERAL.fullmatch(literal):
                return False
            self._value_done(pos)
            if self.done:  # a bare literal value ends before this char, which is not ours
                return False
        if c in _WS:
            return True
        if not self._stack:
            return not self._started and self._value_start(text, pos, c)
        frame = self._stack[-1]
        if frame.expect == "colon":
            frame.expect = "value"
            return c == ":"
        if frame.expect == "next":
            return self._after_member(frame, pos, c)
        if frame.kind == "o" and frame.expect != "value":
            if frame.expect == "first" and c == "}":
                return self._close(pos)
            if c != '"':
                return False
            self._in_string, self._string_is_key, self._string_start = True, True, pos
            return True
        if frame.expect == "first" and c == "]":
            return self._close(pos)
        return self._value_start(text, pos, c)

    def _after_member(self, frame: _Frame, pos: int, c: str) -> bool:
        if c == ",":
            frame.expect = "key" if frame.kind == "o" else "value"
            return True
        if c == ("}" if frame.kind == "o" else "]"):
            return self._close(pos)
        return False

    def _string_char(self, text: str, pos: int, c: str) -> bool:
        if self._escape == 1:
            if c == "u":
                self._escape = 2
                return True
            self._escape = 0
            return c in _ESCAPES
        if self._escape:
            self._escape = 0 if self._escape == 5 else self._escape + 1
            return c in _HEX
        if c == "\\":
            self._escape = 1
            return True
        if c == '"':
            self._in_string = False
            if self._string_is_key:
                self._string_is_key = False
                if len(self._stack) == 1:
                    self._key = json.loads(text[self._string_start:pos + 1])
                self._stack[-1].expect = "colon"
            else:
                self._value_done(pos + 1)
            return True
        return ord(c) >= 0x20

    def _value_start(self, text: str, pos: int, c: str) -> bool:
        self._started = True
        if c not in '{["-0123456789tfn':
            return False
        if len(self._stack) == 1 and self._stack[0].kind == "o" and self._key is not None:
            self.members.setdefault(self._key, Span(pos))
        if c == "{" or c == "[":
            self._stack.append(_Frame("o" if c == "{" else "a", "first"))
        elif c == '"':
            self._in_string, self._string_is_key = True, False
        else:
            self._literal_start = pos
        return True

    def _close(self, pos: int) -> bool:
        self._stack.pop()
        self._value_done(pos + 1)
        return True

    def _value_done(self, end: int) -> None:
        """A value ended at ``end`` (exclusive): a top-level member's span closes, the parent
        expects a comma or its close, or the whole value is done."""
        if not self._stack:
            self.done = True
            return
        if len(self._stack) == 1 and self._key is not None:
            span = self.members.get(self._key)
            if span is not None and span.end is None:
                span.end = end
            self._key = None
        self._stack[-1].expect = "next"
