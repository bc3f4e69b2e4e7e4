"""A marker-delimited stream parser shared by formats that wrap each call in an open / close
pair (Hermes `<tool_call>...</tool_call>` and its kin).

`parse` of a format is defined as feeding the whole text to this parser, so the streamed and
the non-streamed answers cannot differ. Text is released as soon as it cannot be the start of
an opener; a call is released whole, once its closer arrives.
"""

from __future__ import annotations

from collections.abc import Callable

from server.toolcalls.base import CallDone, Parsed, ParsedCall, StreamEvent, TextDelta

BodyParser = Callable[[str], ParsedCall]


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class MarkerStreamParser:
    """Splits text into content and calls. A single "\\n" between content and a call, and
    between calls, is a separator and is dropped (the format renders it)."""

    def __init__(self, open_marker: str, close_marker: str, parse_body: BodyParser):
        self._open = open_marker
        self._close = close_marker
        self._parse_body = parse_body
        self._pending = ""
        self._in_call = False
        self._after_call = False
        self._unclosed = False
        self._scan = _JsonScan()

    @property
    def unclosed(self) -> bool:
        return self._unclosed

    def feed(self, text: str) -> list[StreamEvent]:
        self._pending += text
        events: list[StreamEvent] = []
        while self._step(events):
            pass
        return events

    def close(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._in_call:
            self._unclosed = True  # a cut call is never a call, and never content either
        else:
            self._emit_text(self._strip_separator(self._pending), events)
        self._pending = ""
        return events

    def _step(self, events: list[StreamEvent]) -> bool:
        if self._in_call:
            return self._step_call(events)
        return self._step_text(events)

    def _step_text(self, events: list[StreamEvent]) -> bool:
        if self._after_call:
            if not self._pending:
                return False
            self._pending = self._strip_separator(self._pending)
        at = self._pending.find(self._open)
        if at >= 0:
            self._emit_text(self._pending[:at].removesuffix("\n"), events)
            self._pending = self._pending[at + len(self._open) :]
            self._in_call = True
            return True
        hold = _partial_suffix(self._pending, self._open)
        # A trailing newline may be the separator before a call: hold it until we know.
        if self._pending[: len(self._pending) - hold].endswith("\n"):
            hold += 1
        self._emit_text(self._pending[: len(self._pending) - hold], events)
        self._pending = self._pending[len(self._pending) - hold :]
        return False

    def _step_call(self, events: list[StreamEvent]) -> bool:
        at = self._scan.find(self._pending, self._close)
        if at < 0:
            return False
        events.append(CallDone(self._parse_body(self._pending[:at])))
        self._pending = self._pending[at + len(self._close) :]
        self._in_call = False
        self._after_call = True
        self._scan = _JsonScan()
        return True

    def _strip_separator(self, text: str) -> str:
        if self._after_call and text:
            self._after_call = False
            return text.removeprefix("\n")
        return text

    @staticmethod
    def _emit_text(text: str, events: list[StreamEvent]) -> None:
        if text:
            events.append(TextDelta(text))


class _JsonScan:
    """Finds a closing marker outside JSON strings: an argument may hold the marker's text
    (`"note": "</tool_call>"`), which must not end the call. Scanning resumes where it
    stopped, so streamed text is read once."""

    def __init__(self) -> None:
        self.pos = 0
        self.in_string = False
        self.escaped = False

    def find(self, text: str, marker: str) -> int:
        while self.pos < len(text):
            if not self.in_string:
                if text.startswith(marker, self.pos):
                    return self.pos
                if marker.startswith(text[self.pos :]):
                    return -1  # a partial marker at the end: wait for more text
            self._advance(text[self.pos])
            self.pos += 1
        return -1

    def _advance(self, char: str) -> None:
        if self.escaped:
            self.escaped = False
        elif char == "\\" and self.in_string:
            self.escaped = True
        elif char == '"':
            self.in_string = not self.in_string


def parse_with(parser: MarkerStreamParser, text: str) -> Parsed:
    """Whole-text parse, defined as the stream parse of the whole text."""
    events = parser.feed(text) + parser.close()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = tuple(e.call for e in events if isinstance(e, CallDone))
    return Parsed(content=content, calls=calls, unclosed=parser.unclosed)
