"""Resumable scanners that find where one call ends in growing text, reading each character once.

A stream parser makes one scanner per call and asks it again each time text arrives; `find`
returns (end of the call body, start of the text after the call) or None while the end is not in
sight, and `finish` says whether the body may end at the end of the output. Scanners know no
format: formats choose one and give it their markers.
"""

from __future__ import annotations

import re
from typing import Protocol

Span = tuple[int, int]

_JSON_STRING_STOP = re.compile(r'["\\]')
_PY_STRING_STOP = {'"': _JSON_STRING_STOP, "'": re.compile(r"['\\]")}
_JSON_STOP = re.compile(r'[\[\]{}()",;\s]')
_PY_STOP = re.compile(r"""[\[\]{}()"',;\s]""")


class Scanner(Protocol):
    def find(self, text: str) -> Span | None: ...

    def finish(self, text: str) -> Span | None: ...


class StringScan:
    """Skips over a quoted string; a trailing backslash waits for the character it escapes."""

    def __init__(self, pos: int = 0) -> None:
        self.pos = pos
        self.quote = ""

    def skip_string(self, text: str) -> bool:
        """Advance past the closing quote; False if the string goes on past `text`."""
        stop = _PY_STRING_STOP[self.quote]
        while True:
            m = stop.search(text, self.pos)
            if m is None:
                self.pos = len(text)
                return False
            if m.group() == "\\":
                if m.end() >= len(text):
                    self.pos = m.start()
                    return False
                self.pos = m.end() + 1
                continue
            self.pos = m.end()
            self.quote = ""
            return True


class MarkerScan(StringScan):
    """The body ends at `close`, searched outside JSON strings: an argument may hold the
    marker's text (`"note": "</tool_call>"`), which must not end the call."""

    def __init__(self, close: str) -> None:
        super().__init__()
        self.close = close
        self._stop = re.compile('["' + re.escape(close[0]) + "]")

    def find(self, text: str) -> Span | None:
        while True:
            if self.quote and not self.skip_string(text):
                return None
            m = self._stop.search(text, self.pos)
            if m is None:
                self.pos = len(text)
                return None
            at = m.start()
            if m.group() == '"' and not text.startswith(self.close, at):
                self.quote, self.pos = '"', at + 1
            elif text.startswith(self.close, at):
                return at, at + len(self.close)
            elif self.close.startswith(text[at:]):
                self.pos = at  # a partial marker at the end: wait for more text
                return None
            else:
                self.pos = at + 1

    def finish(self, text: str) -> Span | None:
        return None


class ValueScan(StringScan):
    """One JSON value (or Python literal / call when `python`) starting at `pos`: it ends where
    its brackets balance, after its string, or before a delimiter (`,` `;` a closing bracket or
    whitespace) when it is a bare scalar."""

    def __init__(self, pos: int = 0, *, python: bool = False) -> None:
        super().__init__(pos)
        self.depth = 0
        self._quotes = "\"'" if python else '"'
        self._stop = _PY_STOP if python else _JSON_STOP

    def find(self, text: str) -> Span | None:
        while True:
            if self.quote:
                if not self.skip_string(text):
                    return None
                if self.depth == 0:
                    return self.pos, self.pos
            m = self._stop.search(text, self.pos)
            if m is None:
                self.pos = len(text)
                return None
            end = self._step(m.group(), m.start())
            if end is not None:
                return end, end

    def _step(self, char: str, at: int) -> int | None:
        """Consume the stop character at `at`; the value's end if it ends there."""
        self.pos = at + 1
        if char in self._quotes:
            self.quote = char
        elif char in "([{":
            self.depth += 1
        elif char in ")]}" and self.depth:
            self.depth -= 1
            return self.pos if self.depth == 0 else None
        elif self.depth == 0:  # a delimiter after a bare scalar, or a closer of the enclosing list
            return at
        return None

    def finish(self, text: str) -> Span | None:
        """A bare scalar may end with the output."""
        if self.quote or self.depth:
            return None
        return len(text), len(text)


class HeadValueScan:
    """A head (the name) up to `mid`, then one value: mistral_v11 `f[ARGS]{...}`, functionary
    `f\\n{...}`, ReAct `f\\nAction Input: {...}`. With `bare`, a `{` also ends the head (vLLM
    decodes mistral's `[ARGS]` special token to nothing). A value that does not open like JSON
    (`{`, `[`, `"`) runs to the end of its line."""

    def __init__(self, mid: str, *, bare: bool = False) -> None:
        self.mid = mid
        self.bare = bare
        self.pos = 0
        self.value: ValueScan | LineScan | None = None

    def find(self, text: str) -> Span | None:
        if self.value is None and not self._find_mid(text):
            return None
        assert self.value is not None
        return self.value.find(text)

    def _find_mid(self, text: str) -> bool:
        at = text.find(self.mid, self.pos)
        brace = text.find("{", self.pos) if self.bare else -1
        if brace >= 0 and (at < 0 or brace < at):
            self.value = ValueScan(brace)
            return True
        if at < 0:
            self.pos = max(self.pos, len(text) - len(self.mid) + 1)
            return False
        start = at + len(self.mid)
        while start < len(text) and text[start] == " ":
            start += 1
        if start == len(text):
            return False  # spaces may go on: decide when the value starts
        self.value = ValueScan(start) if text[start] in '{["' else LineScan(start)
        return True

    def finish(self, text: str) -> Span | None:
        return None if self.value is None else self.value.finish(text)


class LineScan:
    """A value that runs to the end of its line (or of the output)."""

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def find(self, text: str) -> Span | None:
        at = text.find("\n", self.pos)
        if at < 0:
            self.pos = len(text)
            return None
        return at, at

    def finish(self, text: str) -> Span | None:
        return len(text), len(text)


class XmlParamScan:
    """qwen3_coder: the call ends at `close` outside parameter values; a value runs from
    `<parameter=` to its first `\\n</parameter>`, so values may hold `</tool_call>` verbatim."""

    VALUE_OPEN = "<parameter="
    VALUE_CLOSE = "\n</parameter>"

    def __init__(self, close: str) -> None:
        self.close = close
        self.pos = 0
        self.in_value = False

    def find(self, text: str) -> Span | None:
        while True:
            if self.in_value:
                at = text.find(self.VALUE_CLOSE, self.pos)
                if at < 0:
                    self.pos = max(self.pos, len(text) - len(self.VALUE_CLOSE) + 1)
                    return None
                self.in_value, self.pos = False, at + len(self.VALUE_CLOSE)
            value = text.find(self.VALUE_OPEN, self.pos)
            close = text.find(self.close, self.pos)
            if close >= 0 and (value < 0 or close < value):
                return close, close + len(self.close)
            if value < 0:
                longest = max(len(self.VALUE_OPEN), len(self.close))
                self.pos = max(self.pos, len(text) - longest + 1)
                return None
            self.in_value, self.pos = True, value + len(self.VALUE_OPEN)

    def finish(self, text: str) -> Span | None:
        return None
