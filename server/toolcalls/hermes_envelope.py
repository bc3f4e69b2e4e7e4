"""Temporary: the grammar-facing part of the Hermes format (envelope and call body) until
server/toolcalls/hermes.py carries it. It knows the call layout, nothing of parsing or rendering.
"""

from __future__ import annotations

import json

from server.toolcalls.base import Envelope
from server.types import Tool


class HermesEnvelope:
    name = "hermes"
    envelope = Envelope("hermes.lark", "<tool_call>", "</tool_call>")

    def call_body(self, tool: Tool, args_rule: str) -> str:
        """`{"name": "NAME", "arguments": ` ARGS `}`, as the template renders one call."""
        head = '{"name": "' + tool.name + '", "arguments": '
        return f"{json.dumps(head, ensure_ascii=False)} {args_rule} " + '"}"'


HERMES = HermesEnvelope()
