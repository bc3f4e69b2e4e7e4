"""Closing tool objects (server/constraints/closed.py) narrows a schema and never widens it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from server.constraints.closed import closed_objects

SUITE = Path(__file__).resolve().parents[2] / "data" / "json-schema-suite"  # the object keywords' files


def test_objects_of_known_properties_are_closed_at_every_narrowing_position() -> None:
    leaf: dict[str, Any] = {"type": "object", "properties": {"x": {}}}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"a": leaf, "b": {"type": "array", "items": leaf, "prefixItems": [leaf]}, "c": {"anyOf": [leaf]}},
        "additionalProperties": {"type": "object", "properties": {"y": {}}, "additionalProperties": True},
    }
    out = closed_objects(schema)
    props = out["properties"]
    assert props["a"]["additionalProperties"] is False
    assert props["b"]["items"]["additionalProperties"] is False
    assert props["b"]["prefixItems"][0]["additionalProperties"] is False
    assert props["c"]["anyOf"][0]["additionalProperties"] is False
    assert out["additionalProperties"]["additionalProperties"] is True  # what the schema said stays
    assert "additionalProperties" not in schema["properties"]["a"]  # the input is not changed


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"a": {}}, "required": ["a", "b"]},  # b required but undeclared
        {"properties": {"a": {}}, "dependentRequired": {"a": ["b"]}},
        {"properties": {"a": {}}, "minProperties": 2},
        {"properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]},
        {"properties": {"a": {}}, "$ref": "#/$defs/x", "$defs": {"x": {}}},
        {"properties": {"a": {}}, "patternProperties": {"^x": {}}},
        {"properties": {"a": {}}, "unevaluatedProperties": {"type": "integer"}},
        {"type": "object"},  # nothing declared: a free-form object stays free
        {"properties": {}},
        {"properties": {"a": {}}, "required": 3},  # invalid: refused later, never a crash here
        {"properties": {"a": {}}, "dependentRequired": [1]},
    ],
)
def test_objects_that_may_hold_other_names_stay_open(schema: dict[str, Any]) -> None:
    assert "additionalProperties" not in closed_objects(schema)


def test_under_not_one_of_and_all_of_nothing_is_closed() -> None:
    """Closing there could widen the whole (not, oneOf) or make it unsatisfiable (allOf)."""
    leaf = {"type": "object", "properties": {"x": {}}}
    schema = {"not": leaf, "oneOf": [leaf], "allOf": [leaf], "$defs": {"d": leaf}}
    assert closed_objects(schema) == schema


def _suite() -> list[tuple[str, Any, Any, bool]]:
    cases = []
    paths = sorted(SUITE.glob("*.json"))
    assert len(paths) == 16, SUITE  # the vendored files, never silently none
    for path in paths:
        for group in json.loads(path.read_text()):
            for test in group["tests"]:
                cases.append((f"{path.stem}: {group['description']}", group["schema"], test["data"], test["valid"]))
    return cases


def test_closing_never_admits_what_the_schema_refuses() -> None:
    """Over the official Draft 2020-12 suite's object keywords: every instance the closed schema accepts, the
    schema accepts; and closing changes the verdict somewhere (the check can fail)."""
    narrowed = 0
    for where, schema, data, valid in _suite():
        closed = closed_objects(schema) if isinstance(schema, dict) else schema
        if closed == schema or "localhost" in json.dumps(schema):  # remote refs: no network here
            continue
        accepted = jsonschema.Draft202012Validator(closed).is_valid(data)
        assert not accepted or valid, where
        narrowed += accepted != valid
    assert narrowed > 0
