"""The section stream parser, shared by formats whose calls sit in one section: an opener, then
items (one call each) separated by a delimiter (mistral `[TOOL_CALLS][{...}, {...}]`, granite,
phi4_mini, json_envelope, llama3_json's `{...}; {...}`, pythonic `[f(a=1), g()]`).

Each item is released once its brackets balance, before the section closes. An opener not
followed by a plausible first item (`{`, or a name and `(` for Python calls) is not a section: its text
stays content. Text after a closed section is content, verbatim. The section is `unclosed` when
the output ends inside an item, after an opener, or before a required closing bracket.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from server.toolcalls.base import CallDone, StreamEvent
from server.toolcalls.scan import ValueScan
from server.toolcalls.streaming import WHITESPACE, BodyParser, emit_text, first_of, hold_length

_NAME = re.compile(r"[^\W\d][\w.]*")
State = Literal["start", "text", "content", "opened", "wait", "item", "after", "suffix"]


@dataclass(frozen=True)
class Section:
    """The syntax of a call section."""

    openers: tuple[str, ...]
    kept: tuple[str, ...] = ()  # openers whose text begins the first item (llama3's '{"name"')
    at_start: bool = False  # the section can only open the output (after whitespace); else text may precede it
    list_open: str = ""  # expected after the opener (whitespace allowed); a "{" there instead is a single item
    item_sep: str = ","
    end: str = "]"  # closes the section; "": any text that is not `item_sep` ends it
    suffix: str = ""  # expected after `end` (json_envelope's "}")
    text_sep: str = ""  # between content and the opener, dropped
    python: bool = False  # items are Python calls (strings in ' or ")


class SectionStreamParser:
    """Content and call sections of one `Section` syntax; `parse_item` reads one item's text."""

    def __init__(self, syntax: Section, parse_item: BodyParser) -> None:
        self._s = syntax
        self._parse_item = parse_item
        self._holds = [syntax.text_sep + o for o in syntax.openers] + list(syntax.openers)
        self._state: State = "start" if syntax.at_start else "text"
        self._pending = ""
        self._raw = ""  # consumed since the opener: content again if this proves not to be a section
        self._items = 0
        self._single = False
        self._scan = ValueScan()
        self._unclosed = False

    @property
    def unclosed(self) -> bool:
        return self._unclosed

    def feed(self, text: str) -> list[StreamEvent]:
        self._pending += text
        events: list[StreamEvent] = []
        while self._STEPS[self._state](self, events):
            pass
        return events

    def close(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._state in ("text", "start", "content"):
            emit_text(self._pending, events)
        elif self._state == "item" and (end := self._scan.finish(self._pending)) is not None:
            self._release(end[0], events)
        else:
            self._unclosed = self._state in ("item", "opened", "suffix") or bool(self._s.end)
        self._pending = ""
        return events

    # ---- states: each returns True when it changed something and should run again ----

    def _text(self, events: list[StreamEvent]) -> bool:
        at, opener = first_of(self._pending, self._s.openers)
        if at < 0:
            keep = len(self._pending) - hold_length(self._pending, self._holds)
            emit_text(self._pending[:keep], events)
            self._pending = self._pending[keep:]
            return False
        before = self._pending[:at]
        content = before.removesuffix(self._s.text_sep) if self._s.text_sep else before
        emit_text(content, events)
        self._open(before[len(content) :], at, opener)
        return True

    def _start(self, events: list[StreamEvent]) -> bool:
        body = self._pending.lstrip(WHITESPACE)
        at = len(self._pending) - len(body)
        opener = next((o for o in self._s.openers if body.startswith(o)), "")
        if opener:
            self._open(self._pending[:at], at, opener)
        elif any(o.startswith(body) for o in self._s.openers):
            return False
        else:
            self._state = "content"
        return True

    def _content(self, events: list[StreamEvent]) -> bool:
        emit_text(self._pending, events)
        self._pending = ""
        return False

    def _opened(self, events: list[StreamEvent]) -> bool:
        body = self._skip_space()
        start = self._s.list_open
        if not body or (start and start.startswith(body) and body != start):
            return False
        if not start or body.startswith(start):
            self._consume(len(start))
            self._state = "wait"
        elif body[0] == "{" and not self._s.python:
            self._single = True
            self._begin_item()
        else:
            self._not_a_section(events)
        return True

    def _wait(self, events: list[StreamEvent]) -> bool:
        body = self._skip_space()
        if not body:
            return False
        if self._s.end and body.startswith(self._s.end):
            self._close_section()
        elif self._items == 0 and (starts := self._starts_item(body)) is not True:
            if starts is None:
                return False
            self._not_a_section(events)
        else:
            self._begin_item()
        return True

    def _item(self, events: list[StreamEvent]) -> bool:
        found = self._scan.find(self._pending)
        if found is None:
            return False
        self._release(found[0], events)
        if self._single:
            self._done()
        else:
            self._state = "after"
        return True

    def _after(self, events: list[StreamEvent]) -> bool:
        body = self._pending.lstrip(WHITESPACE)
        if not body:
            return False
        space = len(self._pending) - len(body)
        if body.startswith(self._s.item_sep):
            self._consume(space + len(self._s.item_sep))
            self._state = "wait"
        elif self._s.end and body.startswith(self._s.end):
            self._consume(space)
            self._close_section()
        else:
            self._done()  # text after the section, whitespace included, is content
        return True

    def _suffix(self, events: list[StreamEvent]) -> bool:
        body = self._pending.lstrip(WHITESPACE)
        if not body or (self._s.suffix.startswith(body) and body != self._s.suffix):
            return False
        if body.startswith(self._s.suffix):
            self._consume(len(self._pending) - len(body) + len(self._s.suffix))
        self._done()
        return True

    # ---- helpers ----

    # Each state's step: consumes what it can, returns whether to step again (the state may change).
    _STEPS: ClassVar[dict[State, Callable[[SectionStreamParser, list[StreamEvent]], bool]]] = {
        "start": _start,
        "text": _text,
        "content": _content,
        "opened": _opened,
        "wait": _wait,
        "item": _item,
        "after": _after,
        "suffix": _suffix,
    }

    def _open(self, sep: str, at: int, opener: str) -> None:
        kept = len(opener) if opener in self._s.kept else 0
        self._raw = sep + opener[: len(opener) - kept]
        self._pending = self._pending[at + len(opener) - kept :]
        self._state = "wait" if kept else "opened"

    def _skip_space(self) -> str:
        """The pending text after whitespace, which is consumed only once something follows."""
        body = self._pending.lstrip(WHITESPACE)
        if body:
            self._consume(len(self._pending) - len(body))
        return body

    def _consume(self, size: int) -> None:
        self._raw += self._pending[:size]
        self._pending = self._pending[size:]

    def _starts_item(self, text: str) -> bool | None:
        """Whether `text` starts a call item; None while it cannot tell yet."""
        if not self._s.python:
            return text[0] == "{"
        name = _NAME.match(text)
        if name is None:
            return False
        return None if name.end() == len(text) else text[name.end()] == "("

    def _begin_item(self) -> None:
        self._scan = ValueScan(python=self._s.python)
        self._state = "item"

    def _release(self, end: int, events: list[StreamEvent]) -> None:
        events.append(CallDone(self._parse_item(self._pending[:end])))
        self._pending = self._pending[end:]
        self._items += 1
        self._raw = ""

    def _close_section(self) -> None:
        self._consume(len(self._s.end))
        if self._s.suffix:
            self._state = "suffix"
        else:
            self._done()

    def _done(self) -> None:
        self._state = "content" if self._s.at_start else "text"
        self._items, self._single = 0, False

    def _not_a_section(self, events: list[StreamEvent]) -> None:
        emit_text(self._raw, events)
        self._raw = ""
        self._done()
