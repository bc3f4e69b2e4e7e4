"""ReAct text tool calls: `Action: NAME\\nAction Input: {...}`, after optional content (such as
`Thought: ...`) and a "\\n"; several calls are joined by "\\n". A call ends where its JSON
arguments close.

Decisions: content is kept verbatim (a `Thought:` or `Final Answer:` prefix included); content
never contains `Action: `; the space after `Action Input:` is optional when parsing; arguments
that are not a JSON object make a call with `error` set.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.toolcalls.base import Envelope, ParsedCall
from server.toolcalls.jsonargs import dump_arguments, lark_string, read_head_value
from server.toolcalls.scan import HeadValueScan
from server.toolcalls.streaming import FormatBase, MarkerStreamParser
from server.types import Tool, ToolCall

OPEN = "Action: "
MID = "\nAction Input:"


class ReactFormat(FormatBase):
    name = "react"
    envelope = Envelope(grammar_file="react.lark", open=OPEN, close="")

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        blocks = [f"{OPEN}{call.name}{MID} {dump_arguments(call.arguments)}" for call in calls]
        return "\n".join(([content] if content else []) + blocks)

    def inner_parser(self) -> MarkerStreamParser:
        return MarkerStreamParser(OPEN, lambda: HeadValueScan(MID), _parse_body)

    def call_body(self, tool: Tool, args_rule: str) -> str:
        return f"{lark_string(f'{tool.name}{MID} ')} {args_rule}"


def _parse_body(body: str) -> ParsedCall:
    return read_head_value(body, MID)
