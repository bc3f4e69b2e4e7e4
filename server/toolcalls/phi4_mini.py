"""Phi-4-mini tool calls: `functools[{"name": "f", "arguments": {...}}, ...]` after optional
content. `functools[` is plain text in Phi-4's vocabulary, so free text never contains it.
Parsing is the shared JSON-list section (jsonlist.py).
"""

from __future__ import annotations

from server.toolcalls.jsonlist import JsonListFormat

PHI4_MINI = JsonListFormat("phi4_mini", "functools[", "")
