"""Calls written outside the format's own markers, as real models write them: a fenced ```json
block, or a bare JSON value at the start of a line, holding `{"name": ..., "arguments": {...}}`
(or `"parameters"`), or a list of such objects. Qwen2.5-Coder, given the Hermes template's
`<tool_call>` instructions, writes its calls this way far more often than in tags.

`LooseCalls` sits behind a format's own stream parser and reads only its text deltas. A call found
there is released with `raw`, the text it was read from: the chat layer keeps that text as content
when the name is not a declared tool (a JSON answer with a "name" key is not a call). Anything that
is not call-shaped passes through byte for byte, held back only while it may still become a block.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import replace

from server.toolcalls.base import CallDone, ParsedCall, StreamEvent, StreamParser, TextDelta
from server.toolcalls.jsonargs import loads, with_arguments
from server.toolcalls.scan import ValueScan
from server.toolcalls.streaming import WHITESPACE

ARGS_KEYS = ("arguments", "parameters")
_CALL_KEYS = frozenset({"name", "id", "type", *ARGS_KEYS})
# A complete opener: a fence (```json or ```, then a newline), or a line start; then { or [.
_OPENER = re.compile(r"(```(?:json)?[ \t]*\n\s*|(?<=\n)[ \t]*)(?=[{\[])")
# What may still grow into an opener at the end of the text.
_PARTIAL = re.compile(r"(?:`{1,3}(?:j(?:s(?:o(?:n)?)?)?)?[ \t]*(?:\n\s*)?|(?<=\n)[ \t]*)\Z")
_FENCE_END = "```"


class LooseCalls:
    """`inner`'s events, with call-shaped blocks in its text turned into calls (see module doc)."""

    def __init__(self, inner: StreamParser) -> None:
        self._inner = inner
        self._text = ""  # unreleased text
        self._line_start = True  # `_text` begins at a line start (the output's start is one)
        self._block = ""  # the block so far: fence and whitespace, then the value, then the fence's end
        self._scan: ValueScan | None = None  # set while inside a block
        self._value_start = 0
        self._value_end = -1  # where the value ends in `_block`, once it has
        self._space = ""  # whitespace after released text: dropped if a loose call follows
        self._calls = False  # a loose call was found
        self._cut = False

    @property
    def unclosed(self) -> bool:
        return self._cut or self._inner.unclosed

    def feed(self, text: str) -> list[StreamEvent]:
        return self._route(self._inner.feed(text))

    def close(self) -> list[StreamEvent]:
        out = self._route(self._inner.close())
        if self._scan is not None:
            # The output ended inside a block: a cut call is never a call (nor content); other JSON is text.
            if _looks_like_call(self._block):
                self._cut = True
            else:
                self._emit(self._block, out)
            self._scan, self._block = None, ""
        self._release(len(self._text), out)
        if not self._calls:
            self._emit_space(out)  # text stays byte for byte when no loose call was found
        return out

    def _route(self, events: list[StreamEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            if isinstance(event, TextDelta):
                self._add(event.text, out)
            else:
                self._flush(out)  # a call in the format's own markers: what was held is text
                self._emit_space(out)
                out.append(event)
        return out

    def _add(self, text: str, out: list[StreamEvent]) -> None:
        if self._scan is not None:
            self._block += text
            self._advance_block(out)
        else:
            self._text += text
            self._advance_text(out)

    def _advance_text(self, out: list[StreamEvent]) -> None:
        lead = "\n" if self._line_start else ""  # lets the patterns see a line start before the text
        view = lead + self._text
        m = _OPENER.search(view)
        if m is None:
            hold = _PARTIAL.search(view)
            self._release(max(0, hold.start() - len(lead)) if hold else len(self._text), out)
            return
        self._release(m.start() - len(lead), out)
        self._block, self._text = self._text, ""
        self._scan, self._value_start, self._value_end = ValueScan(), m.end() - m.start(), -1
        self._advance_block(out)

    def _advance_block(self, out: list[StreamEvent]) -> None:
        assert self._scan is not None
        if self._value_end < 0:
            if not _could_be_call(self._block[self._value_start :]):
                # JSON that is no call (a response_format answer): text at once, not held to its end.
                block, self._block, self._scan = self._block, "", None
                self._emit(block, out)
                self._line_start = block.endswith("\n")
                return
            found = self._scan.find(self._block[self._value_start :])
            if found is None:
                return
            self._value_end = self._value_start + found[0]
        end = self._value_end
        if self._block.startswith("`"):
            rest = self._block[end:]
            body = rest.lstrip(WHITESPACE)
            if not body or (_FENCE_END.startswith(body) and body != _FENCE_END):
                return  # the closing fence may still be arriving
            if not body.startswith(_FENCE_END):
                return self._not_a_block(out)
            end += len(rest) - len(body) + len(_FENCE_END)
        calls = _calls(self._block[self._value_start : self._value_end])
        if calls is None:
            return self._not_a_block(out)
        raw, after = self._block[:end], self._block[end:]
        out.extend(CallDone(replace(call, raw=raw if len(calls) == 1 else None)) for call in calls)
        self._scan, self._block, self._line_start = None, "", False
        self._space, self._calls = "", True
        self._add(after, out)

    def _not_a_block(self, out: list[StreamEvent]) -> None:
        """Text after all: released verbatim up to the value's end, then scanning goes on."""
        block, end = self._block, self._value_end
        self._scan, self._block = None, ""
        self._emit(block[:end], out)
        self._line_start = block[:end].endswith("\n")
        self._add(block[end:], out)

    def _release(self, upto: int, out: list[StreamEvent]) -> None:
        if upto <= 0:
            return
        self._emit(self._text[:upto], out)
        self._line_start = self._text[upto - 1] == "\n"
        self._text = self._text[upto:]

    def _flush(self, out: list[StreamEvent]) -> None:
        if self._scan is not None:
            self._emit(self._block, out)
            self._line_start = self._block.endswith("\n")
            self._scan, self._block = None, ""
        self._release(len(self._text), out)

    def _emit(self, text: str, out: list[StreamEvent]) -> None:
        body = text.rstrip(WHITESPACE)
        if body:
            out.append(TextDelta(self._space + body))
            self._space = ""
        self._space += text[len(body) :]

    def _emit_space(self, out: list[StreamEvent]) -> None:
        if self._space:
            out.append(TextDelta(self._space))
            self._space = ""


def reads_as_text(call: ParsedCall, declared: Container[str]) -> bool:
    """Whether a parsed call is text after all: written loose and naming no declared tool. The
    gateway's rule, shared with training's verifier so served and scored answers agree."""
    return call.raw is not None and call.name not in declared


def _calls(value: str) -> list[ParsedCall] | None:
    """The calls a block holds, or None when it is not call-shaped (then it is text)."""
    try:
        data = loads(value)
    except (ValueError, RecursionError):
        return None
    items = data if isinstance(data, list) else [data]
    if not items or not all(_call_shaped(item) for item in items):
        return None
    return [with_arguments(item["name"], next(item[k] for k in ARGS_KEYS if k in item)) for item in items]


def _call_shaped(item: object) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and any(k in item for k in ARGS_KEYS)
        and set(item) <= _CALL_KEYS
    )


_CALL_STARTS = ('{"name"', '[{"name"')


def _could_be_call(value: str) -> bool:
    """Whether a value still starts like a call object or a list of them (whitespace aside)."""
    head = re.sub(r"\s+", "", value[:64])[:8]
    return any(start.startswith(head) or head.startswith(start) for start in _CALL_STARTS)


def _looks_like_call(block: str) -> bool:
    """Whether a cut block began like a call object (`{"name"` or `[{"name"`, spaces aside)."""
    squeezed = re.sub(r"\s+", "", block.lstrip("`").removeprefix("json"))
    return squeezed.startswith(('{"name"', '[{"name"'))
