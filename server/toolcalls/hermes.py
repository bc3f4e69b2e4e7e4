"""Hermes / Qwen2.5 tool calls: each call is
`<tool_call>\\n{"name": "...", "arguments": {...}}\\n</tool_call>`, calls joined by "\\n",
after optional content and a "\\n". The closing marker is searched outside JSON strings, so an
argument may contain `</tool_call>`. Calls written as fenced ```json blocks or bare JSON objects,
as Qwen2.5 models mostly write them, are read too (loose.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.toolcalls.base import Envelope, ParsedCall
from server.toolcalls.jsonargs import call_object, call_object_rule, read_call_object
from server.toolcalls.loose import LooseCalls
from server.toolcalls.scan import MarkerScan
from server.toolcalls.streaming import FormatBase, MarkerStreamParser
from server.types import Tool, ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class HermesFormat(FormatBase):
    name = "hermes"
    # Qwen2.5's first tokens of a ```json block and of a bare object (`{"` and `{\n` are tokens).
    envelope = Envelope(grammar_file="hermes.lark", open=OPEN, close=CLOSE, loose_openers=("```", '{"', "{\n"))

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        blocks = [f"{OPEN}\n{call_object(call)}\n{CLOSE}" for call in calls]
        parts = ([content] if content else []) + blocks
        return "\n".join(parts)

    def inner_parser(self) -> LooseCalls:
        return LooseCalls(MarkerStreamParser(OPEN, lambda: MarkerScan(CLOSE), _parse_body))

    def call_body(self, tool: Tool, args_rule: str) -> str:
        return call_object_rule(tool, args_rule)


def _parse_body(body: str) -> ParsedCall:
    return read_call_object(body.strip())
