"""Stream parsing shared by the formats: the marker parser (each call opens with a marker and ends
where a scanner says), the `<think>` rule, and `parse_with`.

`parse` of every format is defined as feeding the whole text to its stream parser, so streamed
and whole answers cannot differ. Text is released as soon as it cannot be the start of an opener;
a call is released whole, once it is closed.

The `<think>` rule, the same for every format (`without_think`): a `<think>...</think>` block at
the very start of the output (after whitespace) is reasoning, not content, and calls written
inside it are ignored; whitespace after `</think>` is dropped; an unclosed block is all reasoning.
A `<think>` anywhere else is ordinary text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from server.toolcalls.base import CallDone, Envelope, Parsed, ParsedCall, StreamEvent, StreamParser, TextDelta
from server.toolcalls.scan import Scanner
from server.types import Tool

BodyParser = Callable[[str], ParsedCall]
WHITESPACE = " \t\n\r"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    start = max(0, len(text) - len(marker) + 1)
    while (start := text.find(marker[0], start)) >= 0:
        if marker.startswith(text[start:]):
            return len(text) - start
        start += 1
    return 0


def hold_length(text: str, markers: Sequence[str]) -> int:
    """How much of the end of `text` may still become one of `markers`."""
    return max((partial_suffix(text, m) for m in markers if m), default=0)


def first_of(text: str, markers: Sequence[str]) -> tuple[int, str]:
    """The earliest occurrence of any marker: (index, marker), or (-1, "")."""
    found = [(at, m) for m in markers if (at := text.find(m)) >= 0]
    return min(found, key=lambda hit: (hit[0], -len(hit[1]))) if found else (-1, "")


def emit_text(text: str, events: list[StreamEvent]) -> None:
    if text:
        events.append(TextDelta(text))


class MarkerStreamParser:
    """Content, then calls that each start with `opener` and end where a fresh `scanner()` finds
    the end. `text_sep` (between content and the first call) and `call_sep` (after a call) are
    dropped: the format renders them. After an opener, `content_head` (functionary's "all\\n")
    means that content follows instead of a call."""

    def __init__(
        self,
        opener: str,
        scanner: Callable[[], Scanner],
        parse_body: BodyParser,
        *,
        text_sep: str = "\n",
        call_sep: str = "\n",
        content_head: str = "",
    ) -> None:
        self._open = opener
        self._scanner = scanner
        self._parse_body = parse_body
        self._text_sep, self._call_sep, self._head = text_sep, call_sep, content_head
        self._holds = (text_sep + opener, opener)
        self._pending = ""
        self._scan: Scanner | None = None
        self._head_checked = True
        self._after_call = False
        self._unclosed = False

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
        if self._scan is not None:
            end = self._scan.finish(self._pending) if self._head_checked else None
            if end is None:
                self._unclosed = True  # a cut call is never a call, and never content either
            else:
                events.append(CallDone(self._parse_body(self._pending[: end[0]])))
        else:
            emit_text(self._strip_call_sep(self._pending), events)
        self._pending = ""
        return events

    def _step(self, events: list[StreamEvent]) -> bool:
        if self._scan is not None:
            return self._step_call(events)
        return self._step_text(events)

    def _step_text(self, events: list[StreamEvent]) -> bool:
        if self._after_call:
            if not self._pending or self._call_sep.startswith(self._pending):
                return False  # the separator may still be arriving
            self._pending = self._strip_call_sep(self._pending)
        at = self._pending.find(self._open)
        if at >= 0:
            text = self._pending[:at]
            emit_text(text.removesuffix(self._text_sep) if self._text_sep else text, events)
            self._pending = self._pending[at + len(self._open) :]
            self._scan, self._head_checked = self._scanner(), not self._head
            return True
        keep = len(self._pending) - hold_length(self._pending, self._holds)
        emit_text(self._pending[:keep], events)
        self._pending = self._pending[keep:]
        return False

    def _step_call(self, events: list[StreamEvent]) -> bool:
        if not self._head_checked:
            if self._pending.startswith(self._head):
                self._pending, self._scan = self._pending[len(self._head) :], None
                return True
            if self._head.startswith(self._pending):
                return False
            self._head_checked = True
        assert self._scan is not None
        found = self._scan.find(self._pending)
        if found is None:
            return False
        events.append(CallDone(self._parse_body(self._pending[: found[0]])))
        self._pending = self._pending[found[1] :]
        self._scan, self._after_call = None, True
        return True

    def _strip_call_sep(self, text: str) -> str:
        if self._after_call and text:
            self._after_call = False
            return text.removeprefix(self._call_sep)
        return text


class ThinkFilter:
    """Applies the `<think>` rule (module docstring) in front of another stream parser."""

    def __init__(self, inner: StreamParser) -> None:
        self._inner = inner
        self._state = "start"  # start -> think -> after -> pass, or start -> pass
        self._pending = ""

    @property
    def unclosed(self) -> bool:
        return self._inner.unclosed

    def feed(self, text: str) -> list[StreamEvent]:
        if self._state == "pass":
            return self._inner.feed(text)
        self._pending += text
        return self._advance()

    def close(self) -> list[StreamEvent]:
        events = self._inner.feed(self._pending) if self._state == "start" else []
        self._pending = ""
        return events + self._inner.close()

    def _advance(self) -> list[StreamEvent]:
        if self._state == "start":
            body = self._pending.lstrip(WHITESPACE)
            if not body.startswith(THINK_OPEN):
                return [] if THINK_OPEN.startswith(body) else self._pass(self._pending)
            self._state, self._pending = "think", body[len(THINK_OPEN) :]
        if self._state == "think":
            at = self._pending.find(THINK_CLOSE)
            if at < 0:
                self._pending = self._pending[len(self._pending) - partial_suffix(self._pending, THINK_CLOSE) :]
                return []
            self._state, self._pending = "after", self._pending[at + len(THINK_CLOSE) :]
        body = self._pending.lstrip(WHITESPACE)
        self._pending = ""
        return self._pass(body) if body else []

    def _pass(self, text: str) -> list[StreamEvent]:
        self._state, self._pending = "pass", ""
        return self._inner.feed(text)


def without_think(inner: StreamParser) -> StreamParser:
    """`inner` behind the `<think>` rule: what every format's `stream_parser` returns."""
    return ThinkFilter(inner)


def parse_with(parser: StreamParser, text: str) -> Parsed:
    """Whole-text parse, defined as the stream parse of the whole text."""
    events = parser.feed(text) + parser.close()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = tuple(e.call for e in events if isinstance(e, CallDone))
    return Parsed(content=content, calls=calls, unclosed=parser.unclosed)


class FormatBase:
    """What every format shares: `parse` is the stream parse of the whole text, and the stream
    parser sits behind the `<think>` rule. Arguments are JSON unless `args_rules` says otherwise."""

    name: str
    envelope: Envelope

    def parse(self, text: str) -> Parsed:
        return parse_with(self.stream_parser(), text)

    def stream_parser(self) -> StreamParser:
        return without_think(self.inner_parser())

    def inner_parser(self) -> StreamParser:
        """The format's own parser, without the `<think>` rule."""
        raise NotImplementedError

    def args_rules(self, tool: Tool, args_rule: str) -> list[str] | None:
        return None
