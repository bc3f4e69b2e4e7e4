"""Hermes / Qwen2.5 tool calls: each call is
`<tool_call>\\n{"name": "...", "arguments": {...}}\\n</tool_call>`, calls joined by "\\n",
after optional content and a "\\n".
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from server.toolcalls.base import Envelope, Parsed, ParsedCall
from server.toolcalls.jsonargs import dump_arguments, lark_string, read_call_object
from server.toolcalls.streaming import MarkerStreamParser, parse_with
from server.types import Tool, ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class HermesFormat:
    name = "hermes"
    envelope = Envelope(grammar_file="hermes.lark", open=OPEN, close=CLOSE)

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        blocks = [f"{OPEN}\n{self._render_call(call)}\n{CLOSE}" for call in calls]
        parts = ([content] if content else []) + blocks
        return "\n".join(parts)

    def parse(self, text: str) -> Parsed:
        return parse_with(self.stream_parser(), text)

    def stream_parser(self) -> MarkerStreamParser:
        return MarkerStreamParser(OPEN, CLOSE, _parse_body)

    def call_body(self, tool: Tool, args_rule: str) -> str:
        head = '{"name": ' + json.dumps(tool.name, ensure_ascii=False) + ', "arguments": '
        return f'{lark_string(head)} {args_rule} "}}"'

    def args_rules(self, tool: Tool, args_rule: str) -> list[str] | None:
        return None

    @staticmethod
    def _render_call(call: ToolCall) -> str:
        name = json.dumps(call.name, ensure_ascii=False)
        return f'{{"name": {name}, "arguments": {dump_arguments(call.arguments)}}}'


def _parse_body(body: str) -> ParsedCall:
    return read_call_object(body.strip())
