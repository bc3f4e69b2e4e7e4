"""Post-generation validation of calls: a known name and arguments that satisfy the tool's
JSON Schema (Draft 2020-12). Defense in depth behind the grammar, and the source of the
tool-call outcome metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing.exceptions import Unresolvable

from server.bytecache import ByteLRU
from server.patterns import linear_problem, safe_validator
from server.toolcalls.base import ParsedCall
from server.types import Tool


def validate_call(call: ParsedCall, tools: Mapping[str, Tool]) -> str | None:
    """None if the call is valid, else a message saying what is wrong."""
    if call.error:
        return call.error
    tool = tools.get(call.name)
    if tool is None:
        return f"unknown tool {call.name!r}; declared: {', '.join(sorted(tools)) or 'none'}"
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError as exc:
        return f"arguments are not JSON: {exc}"
    try:
        error = next(iter(_validator(_schema_key(tool)).iter_errors(arguments)), None)
    except Unresolvable as exc:  # a `$ref` to a URL or to nothing: never fetched
        return f"the tool's schema has a reference that cannot be resolved: {exc}"
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"arguments do not match the schema at {where}: {error.message}"
    return None


def check_schema(schema: object) -> str | None:
    """None if `schema` is a valid Draft 2020-12 JSON Schema, else where and why not."""
    if not isinstance(schema, (dict, bool)):
        return "a JSON Schema must be an object"
    return _meta_problem(json.dumps(schema, sort_keys=True, default=repr)) or linear_problem(schema)


def clear_schema_checks() -> None:
    """Forget memoized meta-schema checks and validators (for cold-start measurements)."""
    _META_CACHE.clear()
    _VALIDATORS.clear()


_META = Draft202012Validator(Draft202012Validator.META_SCHEMA)
# Keyed by whole schemas (up to limits.max_schema_bytes each): bounded in bytes, not entries.
# A built validator keeps the parsed schema alive, several times its JSON text.
_META_CACHE: ByteLRU[str, tuple[str | None]] = ByteLRU(8 << 20, lambda key, _: len(key) + 128)
_VALIDATORS: ByteLRU[str, Draft202012Validator] = ByteLRU(24 << 20, lambda key, _: 6 * len(key) + 1024)


def _meta_problem(schema_json: str) -> str | None:
    """Memoized: agent loops send the same tools with every turn."""
    found = _META_CACHE.get(schema_json)
    if found is None:
        error = best_match(_META.iter_errors(json.loads(schema_json)))
        where = "" if error is None else "/".join(str(p) for p in error.absolute_path) or "(root)"
        found = (None if error is None else f"at {where}: {error.message}",)
        _META_CACHE.put(schema_json, found)
    return found[0]


def _schema_key(tool: Tool) -> str:
    return json.dumps(tool.parameters, sort_keys=True)


def _validator(schema_json: str) -> Draft202012Validator:
    # RE2 for `pattern` & co.: a model-written string must not backtrack `re` for minutes.
    found = _VALIDATORS.get(schema_json)
    if found is None:
        found = safe_validator(json.loads(schema_json))
        _VALIDATORS.put(schema_json, found)
    return found
