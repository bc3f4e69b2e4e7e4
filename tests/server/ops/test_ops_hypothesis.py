"""Hypothesis-generated tool schemas and conversations through the real chat endpoint: never a
5xx; a schema with a keyword the grammar cannot enforce is a 400; whatever is accepted is
enforced (every returned call validates against its tool's schema)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,11}\Z")
PATTERNS = st.sampled_from(["^[a-z]+$", "^[0-9]{2,4}$", "ab", "^(x|y)+z?$"])
TEXT = st.text(st.characters(codec="utf-8"), max_size=8)

STRING = st.fixed_dictionaries(
    {"type": st.just("string")},
    optional={"minLength": st.integers(0, 2), "maxLength": st.integers(4, 12), "pattern": PATTERNS},
)
INTEGER = st.fixed_dictionaries(
    {"type": st.just("integer")}, optional={"minimum": st.integers(-50, 0), "maximum": st.integers(1, 50)}
)
NUMBER = st.fixed_dictionaries({"type": st.just("number")}, optional={"exclusiveMinimum": st.just(0)})
ENUM = st.fixed_dictionaries(
    {"enum": st.lists(st.one_of(TEXT, st.integers(-9, 9), st.booleans()), min_size=1, max_size=4, unique=True)}
)
LEAF = st.one_of(STRING, INTEGER, NUMBER, ENUM, st.just({"type": "boolean"}), st.just({"type": "null"}))


def _objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def build(props: dict[str, Any], required: list[bool], closed: bool) -> dict[str, Any]:
        needed = [name for name, r in zip(props, required, strict=True) if r]
        out = {"type": "object", "properties": props, "required": needed}
        return {**out, "additionalProperties": False} if closed else out

    return st.dictionaries(NAMES, children, max_size=3).flatmap(
        lambda props: st.builds(
            build, st.just(props), st.lists(st.booleans(), min_size=len(props), max_size=len(props)), st.booleans()
        )
    )


SCHEMA = st.recursive(
    LEAF,
    lambda children: st.one_of(
        _objects(children),
        st.fixed_dictionaries({"type": st.just("array"), "items": children}, optional={"maxItems": st.integers(1, 3)}),
        st.fixed_dictionaries({"anyOf": st.lists(children, min_size=1, max_size=3)}),
    ),
    max_leaves=6,
)
PARAMETERS = _objects(SCHEMA)
UNSUPPORTED = st.sampled_from(
    [{"contentMediaType": "image/png"}, {"contentEncoding": "base64"}, {"propertyNames": {"maxLength": 3}}]
)
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": TEXT}), min_size=1, max_size=3
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    tools = draw(st.lists(st.tuples(NAMES, PARAMETERS), min_size=1, max_size=3, unique_by=lambda t: t[0]))
    poisoned = draw(st.booleans()) and draw(st.booleans())  # a quarter of requests
    if poisoned:
        tools[0] = (tools[0][0], {**tools[0][1], **draw(UNSUPPORTED)})
    choice = draw(st.sampled_from(["auto", "required", "named"]))
    body = {
        "model": "tiny",
        "messages": draw(MESSAGES),
        "max_tokens": 48,
        "seed": draw(st.integers(0, 99)),
        "tools": [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in tools],
        "tool_choice": {"type": "function", "function": {"name": tools[-1][0]}} if choice == "named" else choice,
        "parallel_tool_calls": draw(st.booleans()),
    }
    return body, poisoned


# A poisoned tool that a named choice leaves out of the grammar was once accepted (fixed: every
# tool is compiled): pinned as an explicit example, since a random draw may miss it.
LEFT_OUT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 48,
    "seed": 0,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "a",
                "parameters": {"type": "object", "properties": {}, "propertyNames": {"maxLength": 3}},
            },
        },
        {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "b"}},
    "parallel_tool_calls": False,
}


@pytest.mark.slow
@given(request=requests())
@example(request=(LEFT_OUT, True))
@settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_tools_are_refused_or_enforced(gateway: Any, request: tuple[dict[str, Any], bool]) -> None:
    body, poisoned = request
    r = httpx.post(gateway.v1 + "/chat/completions", json=body, timeout=120)
    assert r.status_code in (200, 400), r.text
    if poisoned:
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (body, r.text)
        return
    if r.status_code == 400:  # only llguidance's own limits may refuse a supported schema
        assert r.json()["error"]["code"] in ("unsupported", "invalid_request"), r.text
        return
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in body["tools"]}
    for call in r.json()["choices"][0]["message"].get("tool_calls") or []:
        args = json.loads(call["function"]["arguments"])
        errors = list(Draft202012Validator(schemas[call["function"]["name"]]).iter_errors(args))
        assert not errors, (call, errors[0].message)
