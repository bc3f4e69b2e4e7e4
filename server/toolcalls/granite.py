"""IBM Granite 3.x tool calls: `<|tool_call|>[{"name": "f", "arguments": {...}}, ...]` (a special
token, then a JSON list), after optional content. Parsing is the shared JSON-list section
(jsonlist.py).
"""

from __future__ import annotations

from server.toolcalls.jsonlist import JsonListFormat

GRANITE = JsonListFormat("granite", "<|tool_call|>", "[")
