"""Mistral tool calls, two generations (`[TOOL_CALLS]` and `[ARGS]` are special tokens):

- `mistral` (tokenizers before v11): `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]`, the
  shared JSON-list section (jsonlist.py).
- `mistral_v11`: `[TOOL_CALLS]f[ARGS]{...}`, repeated for each call with nothing between calls.
  A call ends where its arguments object closes. The parser also accepts `[TOOL_CALLS]f{...}`
  (what vLLM's decoder leaves once it drops the `[ARGS]` token).

Content may precede the first `[TOOL_CALLS]`, with nothing between them.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.toolcalls.base import Envelope, ParsedCall
from server.toolcalls.jsonargs import dump_arguments, lark_string, read_head_value
from server.toolcalls.jsonlist import JsonListFormat
from server.toolcalls.scan import HeadValueScan
from server.toolcalls.streaming import FormatBase, MarkerStreamParser
from server.types import Tool, ToolCall

OPEN = "[TOOL_CALLS]"
ARGS = "[ARGS]"

MISTRAL = JsonListFormat("mistral", OPEN, "[")


class MistralV11Format(FormatBase):
    name = "mistral_v11"
    envelope = Envelope(grammar_file="mistral_v11.lark", open=OPEN, close="", text_sep="", args_open=ARGS)

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        blocks = [f"{OPEN}{call.name}{ARGS}{dump_arguments(call.arguments)}" for call in calls]
        return (content or "") + "".join(blocks)

    def inner_parser(self) -> MarkerStreamParser:
        return MarkerStreamParser(OPEN, lambda: HeadValueScan(ARGS, bare=True), _parse_body, text_sep="", call_sep="")

    def call_body(self, tool: Tool, args_rule: str) -> str:
        return f"{lark_string(tool.name)} argsopen {args_rule}"


def _parse_body(body: str) -> ParsedCall:
    return read_head_value(body, ARGS, bare=True)


MISTRAL_V11 = MistralV11Format()
