"""Shared JSON helpers for formats whose calls carry JSON arguments.

Arguments leave the gateway in one canonical layout (Python's json.dumps defaults, non-ASCII
kept), the same layout the grammar pins, so parsed, rendered and streamed forms agree.
"""

from __future__ import annotations

import json
from typing import Any

from server.toolcalls.base import ParsedCall
from server.types import Tool, ToolCall


def loads(text: str) -> Any:
    """`json.loads` without NaN / Infinity (not JSON; they would not survive a round trip).
    Raises ValueError (JSONDecodeError included) or RecursionError."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def dump_arguments(arguments: str | dict[str, Any]) -> str:
    """Canonical JSON text of an arguments object given as text or as a dict."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def lark_string(text: str) -> str:
    """`text` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def call_object(call: ToolCall, args_key: str = "arguments") -> str:
    """`{"name": ..., "arguments": {...}}` in the canonical layout."""
    name = json.dumps(call.name, ensure_ascii=False)
    return f'{{"name": {name}, "{args_key}": {dump_arguments(call.arguments)}}}'


def call_object_rule(tool: Tool, args_rule: str, args_key: str = "arguments") -> str:
    """The grammar expression of `call_object` for `tool`, its arguments matching `args_rule`."""
    head = '{"name": ' + json.dumps(tool.name, ensure_ascii=False) + f', "{args_key}": '
    return f'{lark_string(head)} {args_rule} "}}"'


def read_call_object(text: str, *, args_keys: tuple[str, ...] = ("arguments",)) -> ParsedCall:
    """Read `{"name": ..., "arguments": {...}}` (the first of `args_keys` present is the
    arguments); a missing or null arguments field means `{}`.

    Models sometimes write the arguments as a JSON string holding the object; that is
    accepted and normalised, since the intent is unambiguous.
    """
    try:
        obj = loads(text)
    except (ValueError, RecursionError) as exc:
        return ParsedCall(name=_guess_name(text), arguments=text, error=f"call is not JSON: {exc}")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParsedCall(name="", arguments=text, error='call has no string "name"')
    key = next((k for k in args_keys if k in obj), args_keys[0])
    return with_arguments(obj["name"], obj.get(key))


def read_head_value(body: str, mid: str, *, bare: bool = False) -> ParsedCall:
    """Read `NAME<mid>{...}` (mistral_v11 `f[ARGS]{...}`, functionary `f\n{...}`); with `bare`,
    a `{` may follow the name directly."""
    at = body.find(mid)
    brace = body.find("{") if bare else -1
    if brace >= 0 and (at < 0 or brace < at):
        name, rest = body[:brace], body[brace:]
    elif at >= 0:
        name, rest = body[:at], body[at + len(mid) :]
    else:
        return ParsedCall(name=body.strip(), arguments="", error=f"no {mid!r} between name and arguments")
    name, rest = name.strip(), rest.strip()
    if not name:
        return ParsedCall(name="", arguments=rest, error="call has no name")
    try:
        return with_arguments(name, loads(rest))
    except (ValueError, RecursionError) as exc:
        return ParsedCall(name=name, arguments=rest, error=f"arguments are not JSON: {exc}")


def with_arguments(name: str, args: Any) -> ParsedCall:
    """A call of `name` with decoded `args`: an object, a JSON string holding one, or None."""
    if isinstance(args, str):
        try:
            args = loads(args)
        except (ValueError, RecursionError):
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
