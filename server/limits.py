"""Cheap size budgets for the JSON Schemas of one request, checked before anything expensive
(meta-schema validation, grammar compilation) looks at them: per schema bytes and depth, and
all schemas together. Knows nothing of HTTP: it sees (param, schema) pairs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from server.config import LimitsSection
from server.errors import InvalidRequest

Schemas = Sequence[tuple[str, object]]  # (the request param that holds it, the schema)


def check_schema_budget(schemas: Schemas, limits: LimitsSection) -> None:
    """400 naming the limit to raise or the schema to shrink, else nothing."""
    total = 0
    for param, schema in schemas:
        size = len(json.dumps(schema, separators=(",", ":")))
        if size > limits.max_schema_bytes:
            raise InvalidRequest(
                f"{param} is {size} bytes as compact JSON; the limit is {limits.max_schema_bytes} "
                "(limits.max_schema_bytes): shrink the schema",
                param=param,
                code="schema_too_large",
            )
        if depth(schema) > limits.max_schema_depth:
            raise InvalidRequest(
                f"{param} nests deeper than {limits.max_schema_depth} levels (limits.max_schema_depth); "
                "flatten the schema",
                param=param,
                code="schema_too_deep",
            )
        total += size
    if total > limits.max_tools_bytes:
        raise InvalidRequest(
            f"the request's schemas add up to {total} bytes; the limit is {limits.max_tools_bytes} "
            "(limits.max_tools_bytes): send fewer or smaller tools",
            param="tools",
            code="schemas_too_large",
        )


def depth(value: object) -> int:
    """Nesting of JSON containers; iterative, so a deep schema cannot exhaust the stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest
