"""Tool arguments decode as closed objects: no property the tool did not declare.

JSON Schema lets an object carry undeclared properties unless `additionalProperties` says
otherwise, and tool schemas rarely say. A grammar that allows them lets a small model put one
tool's argument into another's call (`track_order(order_id=..., reason="damaged")`), which passes
validation and still fails the call. llama.cpp's schema converter and xgrammar's strict mode (vLLM's
default) decode such objects closed; so does callgate. A schema that wants extra properties says
so (`additionalProperties: true` or a schema), and is left as written.

Closing narrows what the grammar accepts and never widens it: `additionalProperties: false` is
added only at positions where narrowing a subschema narrows the whole (properties, items,
prefixItems, additionalProperties, anyOf branches; never under not, oneOf, allOf, if or $defs),
and only to objects whose properties are all in sight (no composition, reference or pattern
beside them, every required name declared, no more properties demanded than declared), so a
satisfiable schema stays satisfiable.
"""

from __future__ import annotations

from typing import Any

from server.types import JSONSchema

# Beside `properties`, these may admit or require names `properties` does not list.
_OPEN_BESIDE = frozenset(
    {
        "additionalProperties",
        "unevaluatedProperties",
        "patternProperties",
        "propertyNames",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "$ref",
        "$dynamicRef",
        "dependentSchemas",
    }
)


def closed_objects(schema: JSONSchema) -> JSONSchema:
    """`schema` with its objects of known properties closed (a copy; `schema` is not changed)."""
    closed: JSONSchema = _close(schema)
    return closed


def _close(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if isinstance(props := out.get("properties"), dict):
        out["properties"] = {name: _close(sub) for name, sub in props.items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _close(out["items"])
    for key in ("prefixItems", "anyOf"):
        if isinstance(out.get(key), list):
            out[key] = [_close(sub) for sub in out[key]]
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _close(out["additionalProperties"])
    if _closable(out):
        out["additionalProperties"] = False
    return out


def _closable(node: dict[str, Any]) -> bool:
    props = node.get("properties")
    if not isinstance(props, dict) or not props or _OPEN_BESIDE & node.keys():
        return False
    # Read defensively: this runs before the schema's own validity check names what is wrong.
    required, dependent = node.get("required", []), node.get("dependentRequired", {})
    if not isinstance(required, list) or not isinstance(dependent, dict):
        return False
    named = required + [n for names in dependent.values() if isinstance(names, list) for n in names]
    fewest = node.get("minProperties", 0)
    return all(isinstance(n, str) and n in props for n in named) and not (
        isinstance(fewest, (int, float)) and fewest > len(props)
    )
