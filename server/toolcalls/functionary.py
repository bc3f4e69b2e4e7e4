"""Functionary v3.2 tool calls: every part of the answer starts with `>>>` and a recipient line:
`>>>all\\n` then content, `>>>NAME\\n` then the JSON arguments, parts written back to back
(`>>>all\\nLet me check>>>get_weather\\n{"city": "Paris"}`). A call ends where its arguments
object closes.

Decisions: text before the first `>>>` is content too; no tool may be named `all` (the content
recipient); content never contains `>>>` and, before a call, never ends with `>`; the generation
prompt must not end with `>>>` (the format expects to write it). `envelope.open` also starts a text
answer, so it is no use as a no-tool threshold trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.errors import UnsupportedFeature
from server.toolcalls.base import Envelope, ParsedCall
from server.toolcalls.jsonargs import dump_arguments, lark_string, read_head_value
from server.toolcalls.scan import HeadValueScan
from server.toolcalls.streaming import FormatBase, MarkerStreamParser
from server.types import Tool, ToolCall

OPEN = ">>>"
CONTENT = "all"


class FunctionaryV3Format(FormatBase):
    name = "functionary_v3"
    envelope = Envelope(
        grammar_file="functionary_v3.lark", open=OPEN, close="", text_sep="", reply=(f"{OPEN}{CONTENT}\n", "")
    )

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        text = f"{OPEN}{CONTENT}\n{content}" if content else ""
        return text + "".join(f"{OPEN}{call.name}\n{dump_arguments(call.arguments)}" for call in calls)

    def inner_parser(self) -> MarkerStreamParser:
        return MarkerStreamParser(
            OPEN, lambda: HeadValueScan("\n"), _parse_body, text_sep="", call_sep="", content_head=f"{CONTENT}\n"
        )

    def call_body(self, tool: Tool, args_rule: str) -> str:
        if tool.name == CONTENT:
            raise UnsupportedFeature(
                f"tool format {self.name!r} reserves the name {CONTENT!r} for content; rename the tool",
                param="function.name",
            )
        return f"{lark_string(tool.name + chr(10))} {args_rule}"


def _parse_body(body: str) -> ParsedCall:
    return read_head_value(body, "\n")
