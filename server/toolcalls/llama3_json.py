"""Llama 3.1 / 3.2 JSON tool calls: the whole output is `{"name": "f", "parameters": {...}}`,
several calls joined by "; " (as vLLM's llama3_json parser reads them), optionally after
`<|python_tag|>`. The format carries no text beside calls: `render` drops content when there are
calls.

Decisions: an output is a call section when, after whitespace, it starts with `<|python_tag|>`
followed by a JSON object, with `{"name"`, or with `{"type"`; anything else is content, whole.
`"arguments"` is read when `"parameters"` is absent. Text after the last call is content. The
grammar writes the template's form (no `<|python_tag|>`) and keeps free text from starting with
`{` or `<|python_tag|>`. A JSON answer (`response_format`) shaped like a call reads as a call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from server.toolcalls.base import Envelope, ParsedCall
from server.toolcalls.jsonargs import call_object, lark_string, read_call_object
from server.toolcalls.sections import Section, SectionStreamParser
from server.toolcalls.streaming import FormatBase
from server.types import Tool, ToolCall

PYTHON_TAG = "<|python_tag|>"
OPEN = '{"name"'
SYNTAX = Section(openers=(PYTHON_TAG, OPEN, '{"type"'), kept=(OPEN, '{"type"'), at_start=True, item_sep=";", end="")


class Llama3JsonFormat(FormatBase):
    name = "llama3_json"
    envelope = Envelope(grammar_file="llama3_json.lark", open=OPEN, close="", text_sep=None, bans=("{", PYTHON_TAG))

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        if not calls:
            return content or ""
        return "; ".join(call_object(call, "parameters") for call in calls)

    def inner_parser(self) -> SectionStreamParser:
        return SectionStreamParser(SYNTAX, _parse_item)

    def call_body(self, tool: Tool, args_rule: str) -> str:
        head = ": " + json.dumps(tool.name, ensure_ascii=False) + ', "parameters": '
        return f'{lark_string(head)} {args_rule} "}}"'


def _parse_item(item: str) -> ParsedCall:
    return read_call_object(item.strip(), args_keys=("parameters", "arguments"))
