"""A generic JSON envelope for base models with no native tool-call format: the whole output is
`{"tool_calls": [{"name": "f", "arguments": {...}}, ...]}` or `{"response": "..."}`.

Decisions: the content of `{"response": "..."}` is the decoded string, streamed as it is decoded
(an escape is held until whole); a non-string response (a `response_format` JSON answer) is content
as its JSON text, released when it closes. Output in neither shape (after whitespace) is content,
verbatim; so is text after the envelope closes. The format carries content or calls, not both:
`render` drops content when there are calls. `envelope.open` shares its first token with a text
answer, so it is no use as a no-tool threshold trigger.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

from server.toolcalls.base import Envelope, StreamEvent, StreamParser
from server.toolcalls.jsonargs import call_object, call_object_rule, read_call_object
from server.toolcalls.scan import StringScan, ValueScan
from server.toolcalls.sections import Section, SectionStreamParser
from server.toolcalls.streaming import WHITESPACE, FormatBase, emit_text
from server.types import Tool, ToolCall

OPEN = '{"tool_calls": ['
CLOSE = "]}"
REPLY = '{"response": '
SYNTAX = Section(openers=(OPEN,), at_start=True, suffix="}")


class JsonEnvelopeFormat(FormatBase):
    name = "json_envelope"
    envelope = Envelope(
        grammar_file="json_envelope.lark", open=OPEN, close=CLOSE, text_sep=None, reply=(REPLY, "}"), json_reply=True
    )

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        if calls:
            return OPEN + ", ".join(call_object(call) for call in calls) + CLOSE
        return REPLY + json.dumps(content or "", ensure_ascii=False) + "}"

    def inner_parser(self) -> StreamParser:
        return _EnvelopeParser()

    def call_body(self, tool: Tool, args_rule: str) -> str:
        return call_object_rule(tool, args_rule)


class _EnvelopeParser:
    """Decides between a reply and anything else (the call section parser's business)."""

    def __init__(self) -> None:
        self._pending = ""
        self._delegate: StreamParser | None = None

    @property
    def unclosed(self) -> bool:
        return self._delegate is not None and self._delegate.unclosed

    def feed(self, text: str) -> list[StreamEvent]:
        if self._delegate is not None:
            return self._delegate.feed(text)
        self._pending += text
        body = self._pending.lstrip(WHITESPACE)
        if REPLY.startswith(body) and body != REPLY:
            return []
        if body.startswith(REPLY):
            self._delegate, rest = _ReplyParser(), body[len(REPLY) :]
        else:
            self._delegate, rest = _section_parser(), self._pending
        self._pending = ""
        return self._delegate.feed(rest)

    def close(self) -> list[StreamEvent]:
        if self._delegate is None:
            self._delegate = _section_parser()
            return self._delegate.feed(self._pending) + self._delegate.close()
        return self._delegate.close()


def _section_parser() -> SectionStreamParser:
    return SectionStreamParser(SYNTAX, lambda item: read_call_object(item.strip()))


_ReplyState = Literal["value", "string", "json", "suffix", "rest"]


class _ReplyParser:
    """The value of `{"response": ...}`, then `}`, then any text as content."""

    def __init__(self) -> None:
        self._pending = ""
        self._state: _ReplyState = "value"  # value -> string | json -> suffix -> rest
        self._quoted = StringScan(1)
        self._quoted.quote = '"'
        self._scan = ValueScan()
        self.unclosed = False

    def feed(self, text: str) -> list[StreamEvent]:
        self._pending += text
        events: list[StreamEvent] = []
        while self._STEPS[self._state](self, events):
            pass
        return events

    def close(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._state in ("json", "rest"):
            emit_text(self._pending, events)  # a cut JSON answer stays content, as OpenAI returns it
        elif self._state == "string":
            emit_text(_decode(self._pending[1:]), events)
        return events

    def _value(self, events: list[StreamEvent]) -> bool:
        self._pending = self._pending.lstrip(WHITESPACE)
        if not self._pending:
            return False
        self._state = "string" if self._pending[0] == '"' else "json"
        return True

    def _string(self, events: list[StreamEvent]) -> bool:
        if self._quoted.skip_string(self._pending):
            emit_text(_decode(self._pending[1 : self._quoted.pos - 1]), events)
            self._pending, self._state = self._pending[self._quoted.pos :], "suffix"
            return True
        whole = 1 + _whole_chars(self._pending[1:])
        emit_text(_decode(self._pending[1:whole]), events)
        self._pending = '"' + self._pending[whole:]
        self._quoted.pos -= whole - 1
        return False

    def _json(self, events: list[StreamEvent]) -> bool:
        found = self._scan.find(self._pending)
        if found is None:
            return False
        emit_text(self._pending[: found[0]], events)
        self._pending, self._state = self._pending[found[0] :], "suffix"
        return True

    def _suffix(self, events: list[StreamEvent]) -> bool:
        body = self._pending.lstrip(WHITESPACE)
        if not body:
            return False
        self._pending, self._state = body.removeprefix("}"), "rest"
        return True

    def _rest(self, events: list[StreamEvent]) -> bool:
        emit_text(self._pending, events)
        self._pending = ""
        return False

    # Each state's step: consumes what it can, returns whether to step again (the state may change).
    _STEPS: ClassVar[dict[_ReplyState, Callable[[_ReplyParser, list[StreamEvent]], bool]]] = {
        "value": _value,
        "string": _string,
        "json": _json,
        "suffix": _suffix,
        "rest": _rest,
    }


def _whole_chars(raw: str) -> int:
    """Length of the longest prefix of a JSON string body that ends on a whole character: a
    trailing escape, or a \\uD8xx high surrogate awaiting its pair, is held back."""
    last = raw.rfind("\\", max(0, len(raw) - 12))
    if last < 0:
        return len(raw)
    run = last - len(raw[:last].rstrip("\\"))
    if run % 2:  # the last backslash is itself escaped
        return len(raw)
    escape = raw[last:]
    if len(escape) == 1 or (escape[1] == "u" and len(escape) < 6):
        return _whole_chars(raw[:last])
    if escape[1] == "u" and len(escape) == 6 and escape[2:4].lower() in ("d8", "d9", "da", "db"):
        return last
    return len(raw)


def _decode(raw: str) -> str:
    """A JSON string body decoded; raw text when it is not valid JSON (an unconstrained model)."""
    try:
        value = json.loads('"' + raw + '"', strict=False)
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw
