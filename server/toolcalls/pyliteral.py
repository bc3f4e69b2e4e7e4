"""Python literals for the pythonic format: writing JSON values as Python literals, reading
calls back (`ast`, never `eval`), and the grammar of Python-literal arguments derived from a
JSON Schema.

Canonical literals: True / False / None, JSON-style double-quoted strings, JSON numbers, lists,
dicts with string keys, in the pinned ", " / ": " layout. Reading is lenient: single-quoted
strings, tuples (as lists) and `true` / `false` / `null` are accepted. Strings and numbers in the
grammar are `%json` placeholders (the same syntax in both languages, so llguidance enforces their
keywords); booleans, null, arrays and objects are Python rules. Schema keywords the grammar cannot
enforce raise UnsupportedFeature.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from server.errors import InvalidRequest, UnsupportedFeature
from server.patterns import safe_validator
from server.toolcalls.argrules import VALIDATION, json_value, resolve, types_of
from server.toolcalls.base import ParsedCall
from server.toolcalls.jsonargs import lark_string
from server.types import JSONSchema

_NAMES = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}
_HANDLED = frozenset(
    {
        "type",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "additionalProperties",
    }
)
_SCALAR = ("string", "number", "integer")
# Keywords that constrain strings or numbers only: the %json of those branches enforces them.
_SCALAR_KEYWORDS = frozenset(
    {
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    }
)
_MAX_EXPANDED = 64


def literal(value: Any) -> str:
    """`value` (decoded JSON) as a canonical Python literal."""
    if value is True or value is False or value is None:
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


def read_call(text: str) -> ParsedCall:
    """One `name(key=value, ...)` call; anything else is a call with `error` set."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return ParsedCall(name="", arguments=text, error=f"not a Python call: {exc}")
    name = _dotted(node.func) if isinstance(node, ast.Call) else None
    if not isinstance(node, ast.Call) or name is None:
        return ParsedCall(name="", arguments=text, error="not a call of a named function")
    if node.args or any(k.arg is None for k in node.keywords):
        return ParsedCall(name=name, arguments=text, error="arguments must be keyword arguments")
    try:
        args = {str(k.arg): _value(k.value) for k in node.keywords}
        return ParsedCall(name=name, arguments=json.dumps(args, ensure_ascii=False, allow_nan=False))
    except (ValueError, RecursionError) as exc:
        return ParsedCall(name=name, arguments=text, error=f"arguments are not literals: {exc}")


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float))):
        return _text(node.value) if isinstance(node.value, str) else node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
        keys = [_value(k) for k in node.keys if k is not None]
        if all(isinstance(k, str) for k in keys):
            return dict(zip(keys, map(_value, node.values), strict=True))
    raise ValueError(f"{ast.unparse(node)[:40]!r} is not a JSON-like literal")


def _text(value: str) -> str:
    """Joins surrogate pairs: Python reads the JSON escape "\\ud83d\\ude00" as two halves."""
    try:
        return value.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return value


class PyGrammar:
    """Lark rules for Python-literal values of JSON Schemas, named after `prefix`."""

    def __init__(self, root: JSONSchema, prefix: str, fmt: str) -> None:
        self.root, self.prefix, self.fmt = root, prefix, fmt
        self.rules: list[str] = []
        self._refs: dict[str, str] = {}

    def add(self, body: str) -> str:
        name = f"{self.prefix}_{len(self.rules)}"
        self.rules.append(f"{name}: {body}")
        return name

    def value(self, schema: JSONSchema | bool) -> str:
        if schema is True or schema == {}:
            return "py_value"
        if schema is False:
            raise InvalidRequest("a `false` schema admits no value")
        assert isinstance(schema, dict)
        self._check(schema)
        if "$ref" in schema:
            return self._ref(str(schema["$ref"]))
        if "anyOf" in schema:
            return "(" + " | ".join(self.value(option) for option in schema["anyOf"]) + ")"
        if "enum" in schema or "const" in schema:
            return self._constants(schema)
        kinds = sorted(types_of(schema) - ({"integer"} if "number" in types_of(schema) else set()))
        return "(" + " | ".join(self._typed(schema, kind) for kind in kinds) + ")"

    def _check(self, schema: JSONSchema) -> None:
        unknown = sorted(k for k in schema if k in VALIDATION - _HANDLED - _SCALAR_KEYWORDS)
        if unknown:
            raise UnsupportedFeature(
                f"tool format {self.fmt!r} cannot enforce JSON Schema keyword {unknown[0]!r} here "
                "(Python literals); remove it or use a JSON format such as hermes"
            )
        if "$ref" in schema and len([k for k in schema if k in VALIDATION]) > 1:
            raise UnsupportedFeature(f"tool format {self.fmt!r} cannot combine '$ref' with other keywords")

    def _ref(self, ref: str) -> str:
        if ref not in self._refs:
            self._refs[ref] = name = f"{self.prefix}_ref{len(self._refs)}"
            self.rules.append(f"{name}: {self.value(resolve({'$ref': ref}, self.root))}")
        return self._refs[ref]

    def _constants(self, schema: JSONSchema) -> str:
        values = [schema["const"]] if "const" in schema else list(schema["enum"])
        rest = safe_validator({k: v for k, v in schema.items() if k not in ("enum", "const")})
        valid = [v for v in values if rest.is_valid(v)]
        if not valid:
            raise InvalidRequest("no value of its enum / const matches the rest of the schema")
        return "(" + " | ".join(dict.fromkeys(lark_string(literal(v)) for v in valid)) + ")"

    def _typed(self, schema: JSONSchema, kind: str) -> str:
        if kind in _SCALAR:
            return json_value({**schema, "type": kind}, self.root)
        if kind == "boolean":
            return '("True" | "False")'
        if kind == "null":
            return '"None"'
        return self._array(schema) if kind == "array" else self._object(schema)

    def _array(self, schema: JSONSchema) -> str:
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        if high is not None and int(high) < low:
            raise InvalidRequest("minItems exceeds maxItems")
        if high == 0 or schema.get("items") is False:
            return '"[]"'
        item = self.add(self.value(schema.get("items", True)))
        return self.add(f'"[" {repeat(item, low, None if high is None else int(high))} "]"')

    def _object(self, schema: JSONSchema) -> str:
        props = schema.get("properties", {})
        if not props:
            extra = schema.get("additionalProperties", True)
            if extra is False:
                return '"{}"'
            pair = self.add(f'{json_value({"type": "string"}, self.root)} ": " {self.value(extra)}')
            return self.add(f'"{{" {repeat(pair, 0, None)} "}}"')
        required = set(schema.get("required", []))
        if required - set(props):
            raise UnsupportedFeature(f"tool format {self.fmt!r} needs required properties declared in `properties`")
        pairs = [
            (f"{lark_string(json.dumps(k, ensure_ascii=False) + ': ')} {self.value(s)}", k in required)
            for k, s in props.items()
            if s is not False
        ]
        return self.add(f'"{{" {chain(pairs, self)} "}}"')


def repeat(item: str, low: int, high: int | None) -> str:
    """`item` separated by ", ", between `low` and `high` times (expanded: no counted repeats)."""
    body = item + f' ", " {item}' * (max(low, 1) - 1)
    if high is None:
        body += f' (", " {item})*'
    elif high - max(low, 1) > _MAX_EXPANDED:
        raise UnsupportedFeature(f"minItems / maxItems {low}..{high} is too wide for Python literals; narrow it")
    else:
        optional = ""
        for _ in range(high - max(low, 1)):
            optional = f'(", " {item}{" " + optional if optional else ""})?'
        body += f" {optional}" if optional else ""
    return body if low > 0 else f"({body})?"


def chain(items: list[tuple[str, bool]], grammar: PyGrammar) -> str:
    """`items` in order, separated by ", ", the optional ones skippable; "" when there are none."""
    first = rest = ""
    for expr, required in reversed(items):
        tail = f" {grammar.add(rest)}" if rest else ""
        if required:
            first, rest = f"{expr}{tail}", f'", " {expr}{tail}'
        else:
            first = f"({expr}{tail} | {grammar.add(first)})" if first else f"({expr}{tail})?"
            rest = f'(", " {expr})?{tail}'
    return first
