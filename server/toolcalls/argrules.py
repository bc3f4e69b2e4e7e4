"""Helpers for `args_rules`, the grammar of arguments that are not one JSON object (qwen3_coder's
XML parameters, pythonic keyword arguments): the tool's parameters as an ordered list, and
`%json {schema}` placeholders for values the compiler expands with its pinned JSON layout.

The rules are Lark text limited to what the GBNF emitter translates: string literals, rule
names derived from the given `args_rule`, `|`, `( )`, `?`, `*`, `%json` placeholders, and the
format's own named terminals (defined in its grammar files). A schema feature a format cannot
express raises UnsupportedFeature naming it; nothing is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from server.errors import InvalidRequest, UnsupportedFeature
from server.patterns import safe_validator
from server.types import JSONSchema, Tool

VALIDATION = frozenset(Draft202012Validator.VALIDATORS)
# Top-level keywords a keyword-argument syntax honours; additionalProperties is honoured by
# writing the declared parameters only.
TOP_LEVEL = frozenset({"type", "properties", "required", "additionalProperties"})
DEFS = ("$defs", "definitions")


@dataclass(frozen=True)
class Param:
    name: str
    schema: JSONSchema | bool
    required: bool


def keyword_params(tool: Tool, fmt: str) -> list[Param]:
    """The tool's parameters in schema order; raises for what a keyword syntax cannot express."""
    schema = tool.parameters or {}
    extra = sorted(k for k in schema if k in VALIDATION - TOP_LEVEL)
    if extra:
        raise UnsupportedFeature(
            f"tool format {fmt!r} writes each parameter separately and cannot enforce top-level "
            f"JSON Schema keyword {', '.join(map(repr, extra))}; remove it or use a JSON format such as hermes"
        )
    props: dict[str, Any] = dict(schema.get("properties", {}))
    required = list(schema.get("required", []))
    missing = [name for name in required if name not in props]
    if missing:
        raise UnsupportedFeature(
            f"tool format {fmt!r} needs every required parameter declared in `properties`; "
            f"missing: {', '.join(missing)}"
        )
    params = [Param(name, sub, name in required) for name, sub in props.items()]
    impossible = [p.name for p in params if not satisfiable(p.schema)]
    if any(p.required for p in params if p.name in impossible):
        raise InvalidRequest(f"no value can satisfy the schema of required parameter {impossible[0]!r}; fix it")
    return [p for p in params if p.name not in impossible]  # an impossible optional one is never written


def satisfiable(schema: JSONSchema | bool) -> bool:
    """False for `false` and for an enum / const none of whose values fits the rest (a common
    slip: `"type": "boolean"` beside `"enum": ["True", "False"]`)."""
    if not isinstance(schema, dict):
        return schema
    if "enum" not in schema and "const" not in schema:
        return True
    values = [schema["const"]] if "const" in schema else list(schema["enum"])
    rest = safe_validator({k: v for k, v in schema.items() if k not in ("enum", "const")})
    return any(rest.is_valid(v) for v in values)


def with_defs(schema: JSONSchema | bool, root: JSONSchema) -> JSONSchema:
    """A sub-schema made standalone: the root's `$defs` travel with it; `$ref: "#"` cannot."""
    if schema is True:
        schema = {}
    assert isinstance(schema, dict)
    if '"$ref": "#"' in json.dumps(schema):
        raise UnsupportedFeature("a parameter refers to the whole arguments schema ($ref '#'); use $defs")
    defs = {k: root[k] for k in DEFS if k in root}
    return {**schema, **defs}


def json_value(schema: JSONSchema | bool, root: JSONSchema) -> str:
    """A `%json` placeholder for one value of `schema` (expanded by the compiler)."""
    return "%json " + json.dumps(with_defs(schema, root), ensure_ascii=False)


def resolve(schema: JSONSchema, root: JSONSchema) -> JSONSchema | bool:
    """The target of a local `$ref` (`#/$defs/NAME` or `#/definitions/NAME`)."""
    ref = str(schema["$ref"])
    parts = ref.split("/")
    if len(parts) != 3 or parts[0] != "#" or parts[1] not in DEFS:
        raise UnsupportedFeature(f"'$ref' {ref!r} (only '#/$defs/NAME' is supported here)")
    try:
        target: JSONSchema | bool = root[parts[1]][parts[2].replace("~1", "/").replace("~0", "~")]
    except (KeyError, TypeError):
        raise InvalidRequest(f"'$ref' {ref!r} points nowhere") from None
    return target


def types_of(schema: JSONSchema) -> set[str]:
    """The JSON types a schema's `type` admits (all when absent; integer is a number)."""
    kinds = schema.get("type", ["object", "array", "string", "number", "integer", "boolean", "null"])
    return {kinds} if isinstance(kinds, str) else set(kinds)
