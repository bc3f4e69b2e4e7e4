"""JSON Schema -> GBNF for llama.cpp-native consumers, in the pinned JSON layout (", " and ": ",
json.dumps' escapes). A converter of a JSON Schema subset (llama.cpp's own converter puts required
properties first, lets whitespace float and drops keywords it does not know); a keyword outside
the subset raises UnsupportedFeature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from server.constraints.spec import SCHEMA_KEYWORDS
from server.errors import InvalidRequest, UnsupportedFeature
from server.patterns import safe_validator
from server.types import JSONSchema

# What the converter enforces; other validation keywords raise, annotations are ignored.
SUPPORTED = frozenset(
    {
        "type",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
    }
)
ALL_TYPES = ("object", "array", "string", "number", "boolean", "null")
# Generic JSON values in the pinned layout (", " and ": "; json.dumps' escapes).
JSON_RULES = r"""json-value ::= json-object | json-array | json-string | json-number | "true" | "false" | "null"
json-object ::= "{" (json-kv (", " json-kv)*)? "}"
json-kv ::= json-string ": " json-value
json-array ::= "[" (json-value (", " json-value)*)? "]"
json-string ::= "\"" json-char* "\""
json-char ::= [^"\\\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4})
json-counted-char ::= [^"\\\x00-\x1F] | "\\" (["\\bfnrt] | json-u-single)
json-u-single ::= "u" ([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2})
json-key-char ::= [^"\\\x00-\x1F]
json-int ::= "-"? ("0" | [1-9] [0-9]*)
json-number ::= json-int ("." [0-9]+)? ([eE] [-+]? [0-9]+)?"""


class Unenforceable(Exception):
    """A schema part the converter cannot express; turned into a request error by the caller."""


class _Unsatisfiable(Exception):
    pass


def gbnf_literal(text: str) -> str:
    """A GBNF string literal; GBNF knows only \\x, \\u, \\U, \\t, \\r, \\n, \\\\ and \\" escapes."""
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = [named.get(c) or (f"\\x{ord(c):02X}" if ord(c) < 0x20 else c) for c in text]
    return '"' + "".join(out) + '"'


def class_char(c: str) -> str:
    """A character inside [...]: ASCII punctuation escaped (], ^, - and \\ are special there)."""
    return f"\\x{ord(c):02X}" if c.isascii() and not c.isalnum() else c


def convert(schema: JSONSchema, name: str, param: str, owner: str) -> str:
    converter = _Converter(schema, name)
    try:
        converter.define(name, schema)
    except Unenforceable as problem:
        raise UnsupportedFeature(
            f"{param} ({owner}): {problem} cannot be expressed in GBNF; use the Lark grammar (llguidance) or remove it",
            param=param,
        ) from None
    except _Unsatisfiable as problem:
        raise InvalidRequest(f"{param} ({owner}): {problem}; fix the schema", param=param) from None
    return "\n".join(f"{n} ::= {body}" for n, body in converter.rules.items())


@dataclass
class _Converter:
    root: JSONSchema
    prefix: str
    rules: dict[str, str] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def define(self, name: str, schema: JSONSchema | bool) -> str:
        self.rules[name] = '""'  # reserved first: recursion through $ref finds it
        try:
            self.rules[name] = self.expression(schema)
        except _Unsatisfiable:
            del self.rules[name]
            raise
        return name

    def fresh(self, hint: str) -> str:
        return f"{self.prefix}-{len(self.rules)}-{hint}"

    def expression(self, schema: JSONSchema | bool) -> str:
        if schema is True or schema == {}:
            return "json-value"
        if schema is False:
            raise _Unsatisfiable("a `false` schema admits no value")
        assert isinstance(schema, dict)
        _check_keywords(schema)
        if "$ref" in schema:
            return self.reference(schema)
        if "anyOf" in schema:
            return self.any_of(schema)
        if "enum" in schema or "const" in schema:
            return self.constants(schema)
        kinds = schema.get("type", list(ALL_TYPES))
        kinds = [kinds] if isinstance(kinds, str) else kinds
        return " | ".join(self.typed(schema, kind) for kind in kinds)

    def reference(self, schema: JSONSchema) -> str:
        _alone("$ref", schema)
        ref = schema["$ref"]
        if ref not in self.refs:
            self.refs[ref] = self.fresh("ref")
            self.define(self.refs[ref], _resolve(self.root, ref))
        return self.refs[ref]

    def any_of(self, schema: JSONSchema) -> str:
        _alone("anyOf", schema)
        names = []
        for option in schema["anyOf"]:
            try:
                names.append(self.define(self.fresh("alt"), option))
            except _Unsatisfiable:
                continue  # an impossible option adds nothing to the union
        if not names:
            raise _Unsatisfiable("no option of its anyOf can be satisfied")
        return " | ".join(names)

    def constants(self, schema: JSONSchema) -> str:
        values = [schema["const"]] if "const" in schema else list(schema["enum"])
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        valid = [v for v in values if safe_validator(rest).is_valid(v)]
        if not valid:
            raise _Unsatisfiable("no value of its enum / const matches the rest of the schema")
        return " | ".join(gbnf_literal(json.dumps(v, ensure_ascii=False)) for v in valid)

    def typed(self, schema: JSONSchema, kind: str) -> str:
        if kind == "object":
            return self.object(schema)
        if kind == "array":
            return self.array(schema)
        if kind == "string":
            return _string(schema)
        return {"integer": "json-int", "number": "json-number", "boolean": '("true" | "false")', "null": '"null"'}[kind]

    def array(self, schema: JSONSchema) -> str:
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        if (high is not None and low > int(high)) or (low > 0 and schema.get("items") is False):
            raise _Unsatisfiable("minItems exceeds what maxItems / items allow")
        if schema.get("items") is False or high == 0:
            return '"[" "]"'
        try:
            item = self.define(self.fresh("item"), schema.get("items", True))
        except _Unsatisfiable:
            if low > 0:
                raise
            return '"[" "]"'
        more = _repeat(f'", " {item}', max(low - 1, 0), None if high is None else int(high) - 1)
        return f'"[" {item} {more} "]"' if low > 0 else f'"[" ({item} {more})? "]"'

    def object(self, schema: JSONSchema) -> str:
        props = dict(schema.get("properties", {}))
        extra = schema.get("additionalProperties", True)
        for name in schema.get("required", []):
            if name not in props:  # required but undeclared: constrained by additionalProperties
                props[name] = extra if extra is not False else _raise_unsat(name)
        required = set(schema.get("required", []))
        pairs = [(n, pair) for n, s in props.items() if (pair := self.pair(n, s, n in required))]
        tail = self.extra_pairs(list(props), extra)
        return '"{" ' + self.chain(pairs, required, tail) + ' "}"'

    def pair(self, key: str, schema: JSONSchema | bool, required: bool) -> str | None:
        """`"key": value`; None for an optional property no value can satisfy (never written)."""
        try:
            value = self.define(self.fresh("value"), schema)
        except _Unsatisfiable:
            if required:
                raise
            return None
        return f"{gbnf_literal(json.dumps(key, ensure_ascii=False) + ': ')} {value}"

    def extra_pairs(self, declared: list[str], extra: JSONSchema | bool) -> str | None:
        """A rule for one undeclared key-value pair (keys never equal a declared name)."""
        if extra is False:
            return None
        value = self.define(self.fresh("extra"), extra)
        key = self.fresh("key")
        self.rules.update(_keys_except(key, declared))
        return self.add(f'"\\"" {key} "\\"" ": " {value}', "pair")

    def chain(self, pairs: list[tuple[str, str]], required: set[str], tail: str | None) -> str:
        """Declared pairs in schema order (optional ones may be left out), then extra pairs."""
        first = f'({tail} (", " {tail})*)?' if tail else '""'
        rest = f'(", " {tail})*' if tail else '""'
        for key, pair in reversed(pairs):
            rest_name = self.add(rest, "rest")
            if key in required:
                first, rest = f"{pair} {rest_name}", f'", " {pair} {rest_name}'
            else:
                first = f"{pair} {rest_name} | {self.add(first, 'first')}"
                rest = f'(", " {pair})? {rest_name}'
        return f"({first})"

    def add(self, body: str, hint: str) -> str:
        name = self.fresh(hint)
        self.rules[name] = body
        return name


def _check_keywords(schema: JSONSchema) -> None:
    known = {k for k in schema if k in SCHEMA_KEYWORDS}
    unsupported = sorted(known - SUPPORTED)
    if unsupported:
        raise Unenforceable("JSON Schema keyword " + ", ".join(repr(k) for k in unsupported))


def _alone(keyword: str, schema: JSONSchema) -> None:
    others = sorted(k for k in schema if k in SCHEMA_KEYWORDS and k != keyword)
    if others:
        raise Unenforceable(f"{keyword!r} beside {', '.join(repr(k) for k in others)}")


def _resolve(root: JSONSchema, ref: str) -> JSONSchema | bool:
    if ref == "#":
        return root
    parts = ref.split("/")
    if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
        raise Unenforceable(f"'$ref' {ref!r} (only '#' and '#/$defs/NAME' are supported)")
    try:
        target: JSONSchema | bool = root[parts[1]][parts[2].replace("~1", "/").replace("~0", "~")]
    except (KeyError, TypeError):
        raise _Unsatisfiable(f"'$ref' {ref!r} points nowhere") from None
    return target


def _raise_unsat(name: str) -> JSONSchema:
    raise _Unsatisfiable(f"required property {name!r} is not declared and additionalProperties is false")


def _string(schema: JSONSchema) -> str:
    for keyword in ("pattern", "format"):
        if keyword in schema:
            raise Unenforceable(f"JSON Schema keyword {keyword!r}")
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if low == 0 and high is None:
        return "json-string"
    # Counted characters exclude \\uD800-\\uDFFF: a surrogate pair is one character, not two.
    return f'"\\"" {_repeat("json-counted-char", low, None if high is None else int(high))} "\\""'


def _repeat(item: str, low: int, high: int | None) -> str:
    if high is None:
        return f"({item})*" if low == 0 else f"({item}){{{low},}}"
    return f"({item}){{{low},{high}}}" if high > 0 else '""'


def _keys_except(name: str, declared: list[str]) -> dict[str, str]:
    """Rules for an object key's text that is none of `declared` (a trie of their prefixes)."""
    # Names that need JSON escapes can never equal an unescaped key: leave them out of the trie.
    plain = sorted({n for n in declared if json.dumps(n, ensure_ascii=False)[1:-1] == n})
    rules: dict[str, str] = {}
    if plain:
        _trie_rule(name, "", plain, rules)
    else:
        rules[name] = "json-key-char*"
    return rules


def _trie_rule(name: str, prefix: str, names: list[str], rules: dict[str, str]) -> None:
    following = sorted({n[len(prefix)] for n in names if len(n) > len(prefix)})
    alts = [] if prefix in names else ['""']
    for c in following:
        child = f"{name}-{ord(c):x}"
        alts.append(f"{gbnf_literal(c)} {child}")
        _trie_rule(child, prefix + c, [n for n in names if n.startswith(prefix + c)], rules)
    others = "".join(class_char(c) for c in following + ['"', "\\"])
    alts.append(f"[^{others}\\x00-\\x1F] json-key-char*")
    rules[name] = " | ".join(alts)
