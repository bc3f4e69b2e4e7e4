"""JSON-list call sections, shared by mistral (before tokenizer v11), granite and phi4_mini: an
opener, then `[{"name": "f", "arguments": {...}}, ...]` in the canonical JSON layout. Content may
come before the opener, with nothing between them; text after the list is content. Each call is
released as soon as its object closes; an opener followed by a single object instead of a list is
read as a list of one (Mistral models do this).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.toolcalls.base import Envelope
from server.toolcalls.jsonargs import call_object, call_object_rule, read_call_object
from server.toolcalls.sections import Section, SectionStreamParser
from server.toolcalls.streaming import FormatBase
from server.types import Tool, ToolCall


class JsonListFormat(FormatBase):
    def __init__(self, name: str, opener: str, list_open: str) -> None:
        self.name = name
        self.envelope = Envelope(grammar_file=f"{name}.lark", open=opener, close="]", text_sep="")
        self._start = opener + list_open
        self._syntax = Section(openers=(opener,), list_open=list_open)

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        text = content or ""
        if calls:
            text += self._start + ", ".join(call_object(call) for call in calls) + "]"
        return text

    def inner_parser(self) -> SectionStreamParser:
        return SectionStreamParser(self._syntax, lambda item: read_call_object(item.strip()))

    def call_body(self, tool: Tool, args_rule: str) -> str:
        return call_object_rule(tool, args_rule)
