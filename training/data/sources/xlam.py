"""xLAM / APIGen rows (Salesforce/xlam-function-calling-60k): `query`, and `tools` and `answers`
as JSON strings. Tools list parameters as {name: {"type": "str, optional", "description",
"default"}} with Python-style type names, mapped here to JSON Schema; a parameter is required
unless its type says optional (", optional" or Optional[...]) or it has a non-empty default.
An empty answer list (the irrelevance sets) becomes a no-tool record with empty content.
"""

from __future__ import annotations

import re
from typing import Any

from training.data.sources.common import ConversionError, Json, arguments_object, infer_kind, loads_loose, tool_call

_SCALARS = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "None": "null",
    "NoneType": "null",
}
_ARRAYS = {"list", "tuple", "set", "sequence", "array", "iterable"}
_OBJECTS = {"dict", "mapping", "object"}


def convert_row(row: Json, where: str) -> Json:
    tools = [_tool(t) for t in _as_list(row.get("tools"), "tools")]
    answers = _as_list(row.get("answers"), "answers")
    calls = [tool_call(a.get("name"), a.get("arguments", {}), f"call_{i}") for i, a in enumerate(answers)]
    answer: Json = (
        {"role": "assistant", "content": None, "tool_calls": calls} if calls else {"role": "assistant", "content": ""}
    )
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ConversionError("no query")
    messages = [{"role": "user", "content": query}, answer]
    meta = {"id": f"xlam:{row.get('id', where)}", "kind": infer_kind(messages, tools), "source": "xlam"}
    return {"messages": messages, "tools": tools, "meta": meta}


def _as_list(value: Any, field: str) -> list[Json]:
    parsed = loads_loose(value) if isinstance(value, str) else value
    if not isinstance(parsed, list) or not all(isinstance(x, dict) for x in parsed):
        raise ConversionError(f"{field} is not a list of objects")
    return parsed


def _tool(raw: Json) -> Json:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConversionError("a tool without a name")
    params = raw.get("parameters") or {}
    already_schema = params.get("type") == "object" and "properties" in params
    schema = params if already_schema else _parameters(params, name)
    return {
        "type": "function",
        "function": {"name": name, "description": raw.get("description") or "", "parameters": schema},
    }


def _parameters(params: Json, tool: str) -> Json:
    properties: Json = {}
    required: list[str] = []
    for pname, spec in params.items():
        if not isinstance(spec, dict):
            raise ConversionError(f"tool {tool!r}: parameter {pname!r} is not an object")
        schema, optional = python_type(str(spec.get("type", "")))
        if spec.get("description"):
            schema["description"] = str(spec["description"])
        properties[pname] = schema
        if not optional and spec.get("default") in (None, ""):
            required.append(pname)
    out: Json = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def python_type(text: str) -> tuple[Json, bool]:
    """("List[int]" -> {"type": "array", "items": {"type": "integer"}}, optional?)."""
    t = text.strip()
    optional = False
    if re.search(r",\s*optional\s*$", t, re.IGNORECASE):
        t, optional = re.sub(r",\s*optional\s*$", "", t, flags=re.IGNORECASE).strip(), True
    head, args = _split(t)
    if head.lower() == "optional" and args:
        return _schema(args[0]), True
    return _schema(t), optional


def _schema(text: str) -> Json:
    head, args = _split(text.strip())
    low = head.lower()
    if low in ("optional",) and args:
        return _schema(args[0])
    if head in _SCALARS:
        return {"type": _SCALARS[head]}
    if low in _ARRAYS:
        items = _schema(args[0]) if len(args) == 1 or (low == "tuple" and len(set(args)) == 1) else {}
        return {"type": "array", "items": items} if items else {"type": "array"}
    if low in _OBJECTS:
        return {"type": "object"}
    if low == "union" and args:
        parts = [_schema(a) for a in args]
        if all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            return {"type": sorted({p["type"] for p in parts})}
    return {}  # Any, Callable, unknown names: any value


def _split(text: str) -> tuple[str, list[str]]:
    """ "Dict[str, List[int]]" -> ("Dict", ["str", "List[int]"])."""
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_.]*)\s*\[(.*)\]", text, re.DOTALL)
    if not m:
        return text, []
    head, inner = m.group(1).split(".")[-1], m.group(2)
    args, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return head, [a for a in args if a]


__all__ = ["convert_row", "python_type", "arguments_object"]
