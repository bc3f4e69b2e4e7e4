"""Linear-time regular expressions for JSON Schema validation. jsonschema's own `pattern`,
`patternProperties` and `additionalProperties` use Python's backtracking `re`, which a schema
such as "^(a+)+b|c" and a model-written string of 40 a's keep busy for minutes, on the event
loop. `SafeValidator` is Draft 2020-12 with those keywords matched by RE2 (google-re2), whose
syntax is close to the Rust regex crate's that llguidance enforces. Pure: stdlib, jsonschema, re2.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, Protocol

import re2
from jsonschema import Draft202012Validator, ValidationError, validators

_MAX_MEM = 8 << 20  # RE2 refuses patterns whose automaton would need more: no memory blow-up


class _Compiled(Protocol):
    def search(self, text: str) -> object | None: ...


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> _Compiled | None:
    """The RE2 program, or None when RE2 cannot take it (the grammar still enforced it)."""
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
