"""Helpers every source converter shares: loose parsing of JSON-ish text, OpenAI call dicts,
the record kind inferred from its shape, and the one error converters raise."""

from __future__ import annotations

import ast
import json
from typing import Any

Json = dict[str, Any]


class ConversionError(ValueError):
    """A row that cannot become a canonical record; the message is the reason reported."""


def loads_loose(text: str) -> Any:
    """JSON, else a Python literal (single quotes, True/None): the two ways sources write objects."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ConversionError(f"neither JSON nor a Python literal: {text[:80]!r}") from None


def arguments_object(value: Any) -> Json:
    """Arguments as an object, whether given as one or as (JSON / Python) text."""
    if isinstance(value, str):
        value = loads_loose(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ConversionError(f"arguments are not an object: {str(value)[:80]!r}")
    return value


def tool_call(name: Any, arguments: Any, call_id: str) -> Json:
    if not isinstance(name, str) or not name:
        raise ConversionError(f"a call without a function name: {name!r}")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments_object(arguments)}}


def function_tool(spec: Json) -> Json:
    """{"name", "description", "parameters"} (or already wrapped) as an OpenAI tool."""
    fn = spec.get("function", spec) if spec.get("type") == "function" else spec
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ConversionError(f"a tool without a name: {str(spec)[:80]!r}")
    out = {"name": fn["name"], "description": fn.get("description") or ""}
    out["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "function", "function": out}


def infer_kind(messages: list[Json], tools: list[Json]) -> str:
    """single / parallel / multi_turn by the answer's calls and the turns before; no-tool kinds."""
    calls = messages[-1].get("tool_calls") or []
    if any(m["role"] == "tool" for m in messages) or sum(m["role"] == "assistant" for m in messages) > 1:
        return "multi_turn"  # an answer after tool results or earlier turns
    if not calls:
        return "no_tool_irrelevant" if tools else "no_tool_chitchat"
    return "parallel" if len(calls) > 1 else "single"


def trim_to_answer(messages: list[Json]) -> list[Json]:
    """Drop trailing turns after the last assistant message (the answer must come last)."""
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    if not messages:
        raise ConversionError("no assistant message to learn from")
    return messages
