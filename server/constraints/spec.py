"""The request side of the constraint compiler: the spec (tools x tool_choice x parallel x text
format), the checks that turn a bad request into a 400 naming its cause, and the mode plan, the
meaning of each tool_choice mode (DESIGN decision 2), shared by the Lark and GBNF emitters.

The one authority on tools and tool_choice: the API's translation (api/translate.py) checks a
request at the edge with `check_tools`, `check_choice` and `check_valid_schema` from here, and
compilation checks again with `check_request`, which adds what only the grammar engine needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import jsonschema

from server.constraints.closed import closed_objects
from server.errors import InvalidRequest, UnsupportedFeature
from server.toolcalls.validation import check_schema
from server.types import ChoiceMode, JSONSchema, TextFormat, Tool, ToolChoice

# The repository's grammars/ folder; an installed package (a container) points here instead.
GRAMMARS_DIR = Path(os.environ.get("CALLGATE_GRAMMARS", Path(__file__).resolve().parents[2] / "grammars"))
TEXT_KINDS = ("text", "json_object", "json_schema")
TEXT_PARAM = "response_format.json_schema.schema"
# Python's json.dumps layout (", " and ": ", no other whitespace): free whitespace let a random
# model fill max_tokens with tabs. \uXXXX escapes stay allowed: json.dumps writes them by default.
JSON_LAYOUT: dict[str, object] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "json_allow_general_unicode_escapes": True,
}
# Draft 2020-12 validation keywords, to name the culprit in llguidance's messages.
SCHEMA_KEYWORDS = frozenset(jsonschema.Draft202012Validator.VALIDATORS) | {
    "then",
    "else",
    "minContains",
    "maxContains",
    "$dynamicAnchor",
}
# Describe values, yet llguidance ignores them (annotations in 2020-12): refuse, never drop.
_IGNORED = frozenset({"contentEncoding", "contentMediaType", "contentSchema"})
_ONE = (
    "items",
    "additionalProperties",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_RESERVED = "'x-guidance' is reserved: the gateway pins the JSON layout; remove it"


@dataclass(frozen=True)
class ConstraintSpec:
    tools: tuple[Tool, ...]
    choice: ToolChoice
    parallel: bool  # parallel_tool_calls
    text: TextFormat
    special_tokens: frozenset[str]  # texts of the vocabulary's special tokens (from the engine)
    # Ids of special tokens that grammars cannot name as `<...>` (Mistral's `[TOOL_CALLS]`):
    # referenced as `<[id]>`, so the model emits its own control token, not the spelled text.
    token_ids: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Plan:
    """What the grammar allows, format aside; shared by the Lark and GBNF emitters."""

    tools: tuple[Tool, ...]  # callable tools: all, the named one, or none
    text: bool  # free text (or JSON text) may be answered
    many: bool  # more than one call


@cache
def load_grammar_file(name: str) -> str:
    """The one loader of grammars/ files (read once each)."""
    return (GRAMMARS_DIR / name).read_text(encoding="utf-8")


def plan(spec: ConstraintSpec) -> Plan | None:
    """Check the request and decide what the grammar allows; None means unconstrained."""
    check_request(spec)
    mode = spec.choice.mode
    if mode is ChoiceMode.NONE or not spec.tools:
        return None if spec.text.kind == "text" and not spec.tools else Plan((), True, False)
    if mode is ChoiceMode.NAMED:
        return Plan(tuple(t for t in spec.tools if t.name == spec.choice.name), False, False)
    return Plan(spec.tools, mode is ChoiceMode.AUTO, spec.parallel)


def check_request(spec: ConstraintSpec) -> None:
    _check_text_format(spec.text)
    check_tools(spec.tools)
    for i, tool in enumerate(spec.tools):
        _check_tool_schema(i, tool)
    check_choice(spec.choice, [t.name for t in spec.tools])


def check_tools(tools: Sequence[Tool]) -> None:
    """Names well-formed and unique, parameters a valid Draft 2020-12 schema."""
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        _check_name(i, tool.name, seen)
        param = f"tools[{i}].function.parameters"
        check_valid_schema(tool.parameters, f"{param} ({tool.name})", param)


def _check_text_format(text: TextFormat) -> None:
    if text.kind not in TEXT_KINDS:
        raise InvalidRequest(
            f"response_format type {text.kind!r} is not supported; use one of {', '.join(TEXT_KINDS)}",
            param="response_format",
        )
    if text.kind == "json_schema":
        if not isinstance(text.schema, dict):
            raise InvalidRequest("response_format json_schema needs a `schema` object", param=TEXT_PARAM)
        _check_schema(text.schema, TEXT_PARAM, TEXT_PARAM)


def _check_name(i: int, name: str, seen: dict[str, int]) -> None:
    param = f"tools[{i}].function.name"
    if not name or json.dumps(name, ensure_ascii=False)[1:-1] != name:
        raise InvalidRequest(
            f"tools[{i}] has name {name!r}; a tool name must be non-empty and free of quotes, "
            "backslashes and control characters (for example ^[a-zA-Z0-9_-]{1,64}$)",
            param=param,
        )
    if name in seen:
        raise InvalidRequest(
            f"tool name {name!r} is declared twice (tools[{seen[name]}] and tools[{i}]); tool names must be unique",
            param=param,
        )
    seen[name] = i


def check_choice(choice: ToolChoice, names: Sequence[str]) -> None:
    if choice.mode in (ChoiceMode.REQUIRED, ChoiceMode.NAMED) and not names:
        raise InvalidRequest(
            f"tool_choice {choice.label!r} needs at least one tool in `tools`; "
            "send tools or use tool_choice 'auto' / 'none'",
            param="tool_choice",
        )
    if choice.mode is ChoiceMode.NAMED and choice.name not in names:
        raise InvalidRequest(
            f"tool_choice names function {choice.name!r}, which is not a declared tool; declared: {', '.join(names)}",
            param="tool_choice",
        )


def _check_tool_schema(i: int, tool: Tool) -> None:
    """A valid Draft 2020-12 schema of a JSON object, with no layout options of its own."""
    param = f"tools[{i}].function.parameters"
    schema = tool_schema(tool)
    _check_schema(schema, f"{param} ({tool.name})", param)
    if schema["type"] != "object":
        raise InvalidRequest(
            f'{param} ({tool.name}) must describe a JSON object ("type": "object"), got type {schema["type"]!r}',
            param=param,
        )


def _check_schema(schema: JSONSchema, where: str, param: str) -> None:
    """Draft 2020-12 valid, no layout options of its own, no keyword llguidance would ignore."""
    if "x-guidance" in schema:
        raise UnsupportedFeature(f"{where}: {_RESERVED}", param=param)
    check_valid_schema(schema, where, param)
    ignored = sorted(_IGNORED & _keywords_in(schema))
    if ignored:
        raise UnsupportedFeature(
            f"{where}: JSON Schema keyword {', '.join(map(repr, ignored))} cannot be enforced by "
            "the grammar engine (it would be silently ignored); remove it",
            param=param,
        )


def check_valid_schema(schema: JSONSchema, where: str, param: str) -> None:
    problem = check_schema(schema)
    if problem is not None:
        raise InvalidRequest(f"{where} is not a valid JSON Schema (Draft 2020-12) {problem}", param=param)


def _keywords_in(schema: JSONSchema) -> set[str]:
    """Keywords used anywhere in the schema (at schema positions, not property names)."""
    found: set[str] = set()
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found |= node.keys()
            stack += [node[k] for k in _ONE if k in node]
            stack += [s for k in _MANY for s in node.get(k, [])]
            stack += [s for k in _MAP for s in node.get(k, {}).values()]
    return found


def layout_json(schema: JSONSchema) -> str:
    """The schema with the pinned layout (x-guidance is read at a %json's top level only)."""
    return json.dumps({"x-guidance": JSON_LAYOUT, **schema})


def tool_schema(tool: Tool) -> JSONSchema:
    """The arguments' schema as the grammar enforces it: an object, closed where its properties
    are all declared (constraints/closed.py)."""
    schema: JSONSchema = dict(tool.parameters) or {}
    schema.setdefault("type", "object")
    return closed_objects(schema)


def grammar_tool(tool: Tool) -> Tool:
    """`tool` with the schema the grammar enforces, for formats that write their own argument rules."""
    return replace(tool, parameters=tool_schema(tool))


def text_schema(text: TextFormat) -> JSONSchema:
    return dict(text.schema or {}) if text.kind == "json_schema" else {"type": "object"}
