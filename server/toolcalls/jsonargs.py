"""Shared JSON helpers for formats whose calls carry JSON arguments.

Arguments leave the gateway in one canonical layout (Python's json.dumps defaults, non-ASCII
kept), the same layout the grammar pins, so parsed, rendered and streamed forms agree.
"""

from __future__ import annotations

import json
from typing import Any

from server.toolcalls.base import ParsedCall


def dump_arguments(arguments: str | dict[str, Any]) -> str:
    """Canonical JSON text of an arguments object given as text or as a dict."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def lark_string(text: str) -> str:
    """`text` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def read_call_object(text: str, *, name_key: str = "name", args_key: str = "arguments") -> ParsedCall:
    """Read `{"name": ..., "arguments": {...}}`; a missing or null arguments field means `{}`.

    Models sometimes write the arguments as a JSON string holding the object; that is
    accepted and normalised, since the intent is unambiguous.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return ParsedCall(name=_guess_name(text), arguments=text, error=f"call is not JSON: {exc}")
    if not isinstance(obj, dict) or not isinstance(obj.get(name_key), str):
        return ParsedCall(name="", arguments=text, error=f'call has no string "{name_key}"')
    return _with_arguments(obj[name_key], obj.get(args_key))


def _with_arguments(name: str, args: Any) -> ParsedCall:
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ParsedCall(name=name, arguments=args, error="arguments are not a JSON object")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ParsedCall(name, json.dumps(args, ensure_ascii=False), "arguments are not an object")
    return ParsedCall(name=name, arguments=json.dumps(args, ensure_ascii=False))


def _guess_name(text: str) -> str:
    """The name from a broken call, for metrics and error messages only."""
    marker = '"name": "'
    start = text.find(marker)
    if start < 0:
        return ""
    end = text.find('"', start + len(marker))
    return text[start + len(marker) : end] if end > 0 else ""
