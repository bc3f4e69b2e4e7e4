"""The tool-call format seam: how one model family writes calls as text.

A format renders an assistant turn to text, parses text back to content plus calls (whole or
streamed), and describes the envelope the constraint compiler wraps around each tool's
argument schema. Formats know nothing of HTTP, engines or OpenAI's wire shapes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from server.types import Tool, ToolCall


@dataclass(frozen=True)
class ParsedCall:
    """One call as found in model output.

    `arguments` is the raw JSON text of the arguments object ("{}" when the model wrote none);
    `error` says why the call could not be read (then `name` may be empty). `raw`: the text the
    call was read from when the model wrote it outside the format's own markers (loose.py); such
    a "call" naming no declared tool is that text, not a call.
    """

    name: str
    arguments: str
    error: str | None = None
    raw: str | None = None


@dataclass(frozen=True)
class Parsed:
    content: str
    calls: tuple[ParsedCall, ...]
    unclosed: bool = False  # the text ended inside an opened call (cut by max_tokens / stop)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class CallDone:
    """Emitted once a call's closing marker arrives: calls are sent whole, never retracted."""

    call: ParsedCall


StreamEvent = TextDelta | CallDone


class StreamParser(Protocol):
    def feed(self, text: str) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]:
        """Flush held-back text at end of generation; `unclosed` is final after this."""
        ...

    @property
    def unclosed(self) -> bool: ...


@dataclass(frozen=True)
class Envelope:
    """The fixed shape around calls, for the constraint compiler.

    `grammar_file` (under grammars/, Lark; the GBNF twin has the same stem) defines rules
    `call` (exactly one call) and `calls` (one or more), built from `lead` (the first opener
    with any text before it), `open`, `close`, `args_open` and `call_body`, which the compiler
    appends: `open`, `close` and `args_open` are special tokens when the vocabulary has them,
    else literal text. `open` is the trigger; the no-tool threshold reads the token where `open`
    and a text answer part (`decision_prefix`).

    A text answer is `reply[0] + text + reply[1]`; `text_sep` is written between text and the
    first call, or is None when a call section is the whole output (no text before calls).
    Free text never contains an opener (`bans`, default `open`) or, when `text_sep` is None,
    never starts with one after whitespace. `json_reply`: the text itself is a JSON string.
    `loose_openers`: how the family's models also open calls outside the markers (loose.py), for
    the no-tool threshold's sum; each should start with a token of its own.
    """

    grammar_file: str
    open: str
    close: str
    text_sep: str | None = "\n"
    reply: tuple[str, str] = ("", "")
    json_reply: bool = False
    bans: tuple[str, ...] = ()
    args_open: str = ""
    loose_openers: tuple[str, ...] = ()

    @property
    def decision_prefix(self) -> str:
        """What a call and a text answer both start with (`{"` in json_envelope, `>>>` in
        functionary): the no-tool threshold reads the next token's probabilities after it."""
        return os.path.commonprefix([self.open, self.reply[0]])

    @property
    def banned(self) -> tuple[str, ...]:
        """The texts free text must avoid (see above)."""
        return self.bans or (self.open,)


class ToolFormat(Protocol):
    name: str
    envelope: Envelope

    def __hash__(self) -> int: ...  # formats are cache keys (the rendered tool prompt)

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str: ...

    def parse(self, text: str) -> Parsed: ...

    def stream_parser(self) -> StreamParser: ...

    def call_body(self, tool: Tool, args_rule: str) -> str:
        """A Lark expression for one call of `tool`, whose arguments match rule `args_rule`:
        string literals and rule names only, so it is GBNF as well. Raises UnsupportedFeature
        (param relative to the tool, such as "function.name") for a tool it cannot write."""
        ...

    def args_rules(self, tool: Tool, args_rule: str) -> list[str] | None:
        """Lark rules defining `args_rule` when the arguments are not JSON (pythonic, XML
        parameters); None means the compiler's `%json` of the tool's schema, layout pinned.
        `%json {schema}` placeholders get the pinned layout; rule names extend `args_rule`; see
        argrules.py for the subset the GBNF emitter translates. Raises like `call_body`."""
        ...
