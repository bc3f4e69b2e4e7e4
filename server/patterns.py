"""Linear-time regular expressions for JSON Schema validation. jsonschema's own `pattern`,
`patternProperties` and `additionalProperties` use Python's backtracking `re`, which a schema
such as "^(a+)+b|c" and a model-written string of 40 a's keep busy for minutes, on the event
loop. `SafeValidator` is Draft 2020-12 with those keywords matched by RE2 (google-re2), whose
syntax is close to the Rust regex crate's that llguidance enforces. It stays itself below a
nested `$schema` (jsonschema would switch to its stock, backtracking class there), resolves no
remote `$ref` (jsonschema's default fetches URLs), and `linear_problem` refuses the one keyword
pair whose stock code still calls `re` directly. Pure: stdlib, jsonschema, referencing, re2.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import attrs
import re2
import referencing
from jsonschema import Draft202012Validator, ValidationError, validators

from server.bytecache import ByteLRU

# RE2 refuses patterns whose program would need more, and its DFA caches stay within it: each
# compiled pattern is charged this much in the cache below (bounded in bytes, not entries).
_MAX_MEM = 1 << 20
_COMPILED: ByteLRU[str, tuple[_Compiled | None]] = ByteLRU(32 << 20, lambda key, _: 2 * len(key) + _MAX_MEM)


class _Compiled(Protocol):
    def search(self, text: str) -> object | None: ...


def compile_pattern(pattern: str) -> _Compiled | None:
    """The RE2 program, or None when RE2 cannot take it (the grammar still enforced it)."""
    found = _COMPILED.get(pattern)
    if found is None:
        found = (_compile(pattern),)
        _COMPILED.put(pattern, found)
    return found[0]


def _compile(pattern: str) -> _Compiled | None:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _MAX_MEM
    try:
        compiled: _Compiled = re2.compile(pattern, options)
    except re2.error:
        return None
    return compiled


def matches(pattern: str, text: str) -> bool:
    """ECMA-262 `pattern` semantics: a search, not anchored. Unknown to RE2 counts as a match."""
    compiled = compile_pattern(pattern)
    return compiled is None or compiled.search(text) is not None


def _pattern(
    validator: Draft202012Validator, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Draft202012Validator, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Draft202012Validator, extra_schema: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = sorted(k for k in instance if k not in declared and not any(matches(p, k) for p in patterns))
    if validator.is_type(extra_schema, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra_schema, path=key)
    elif not extra_schema and extras:
        yield ValidationError(f"additional properties are not allowed ({', '.join(map(repr, extras))} unexpected)")


SafeValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {"pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties},
)


def _pinned_evolve(self: Draft202012Validator, **changes: Any) -> Draft202012Validator:
    """jsonschema's `evolve` without its `validator_for`: a subschema's `$schema` (or a `$ref`
    into a resource that has one) would otherwise hand validation to the stock class, whose
    `pattern` is Python's backtracking `re`. Every dialect is validated as 2020-12 here."""
    cls = type(self)
    changes.setdefault("schema", self.schema)
    for field in attrs.fields(cls):  # type: ignore[arg-type]  # an attrs class, untyped in jsonschema
        if field.init and field.alias not in changes:
            changes[field.alias] = getattr(self, field.name)
    return cls(**changes)


SafeValidator.evolve = _pinned_evolve


def safe_validator(schema: Any) -> Draft202012Validator:
    """The validator for any request-supplied schema: RE2 patterns, one class throughout, and
    a registry that resolves only the document itself and the bundled meta-schemas (no URL)."""
    validator: Draft202012Validator = SafeValidator(schema, registry=referencing.Registry())
    return validator


def linear_problem(schema: object) -> str | None:
    """Why `schema` cannot be validated in linear time, or None. jsonschema's
    `unevaluatedProperties` matches `patternProperties` with `re` itself (not through the
    keyword functions replaced above); refused rather than re-implemented."""
    keys: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys.update(k for k in node if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if {"unevaluatedProperties", "patternProperties"} <= keys:
        return (
            "combines 'unevaluatedProperties' with 'patternProperties', which is not supported; "
            "use 'additionalProperties'"
        )
    return None
