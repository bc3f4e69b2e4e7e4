"""Limits that keep one request from stalling the gateway: schema budgets (400 before any
expensive check), a deadline on constraint compilation, and linear-time `pattern` matching
for post-generation validation (server/patterns.py)."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from server.chat import ChatRequest, constraint_for
from server.config import load_settings
from server.errors import InvalidRequest
from server.limits import check_schema_budget, depth
from server.metrics import Metrics
from server.patterns import SafeValidator, matches
from server.serving.build import build_registry
from server.types import ChoiceMode, Message, Tool, ToolChoice
from tests.support.fakes import INFO, FakeEngine

USER = [{"role": "user", "content": "hi"}]


def _tool(name: str, properties: int) -> dict[str, Any]:
    fields = {f"field_{i:05d}": {"type": "string", "maxLength": 10} for i in range(properties)}
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": fields}}}


def test_schemas_over_the_request_budget_are_400_at_once(gateway: Any) -> None:
    tools = [_tool(f"t{i}", 1200) for i in range(6)]  # ~57 KB each: under the per-tool limit
    start = time.perf_counter()
    r = httpx.post(
        gateway.v1 + "/chat/completions", json={"model": "tiny", "messages": USER, "tools": tools}, timeout=60
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "schemas_too_large", r.text
    assert "limits.max_tools_bytes" in r.json()["error"]["message"]
    assert time.perf_counter() - start < 2  # refused before meta-validating ~350 KB of schema


def test_budget_names_the_param_and_the_limit() -> None:
    limits = load_settings(None).limits
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(30):
        deep = {"type": "array", "items": deep}
    with pytest.raises(InvalidRequest) as info:
        check_schema_budget([("response_format.json_schema.schema", deep)], limits)
    assert info.value.param == "response_format.json_schema.schema" and info.value.code == "schema_too_deep"
    assert depth({"a": [1, {"b": {}}]}) == 4 and depth(3) == 0


def test_slow_compilation_is_a_400_not_a_stall() -> None:
    settings = load_settings(None, **{"model.path": Path(__file__)})  # any file: the engine is a fake
    served = build_registry(settings, Metrics(), FakeEngine()).default()
    tool = Tool(
        "big",
        "",
        {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": f"^x{i}[a-z]+$"} for i in range(400)}},
    )
    request = ChatRequest(messages=(Message("user", "hi"),), tools=(tool,), choice=ToolChoice(ChoiceMode.REQUIRED))

    async def compile_with_deadline() -> None:
        await constraint_for(served, request, request.choice, Metrics(), timeout_s=0.001)

    with pytest.raises(InvalidRequest) as info:
        asyncio.run(compile_with_deadline())
    assert info.value.code == "constraint_too_complex" and "limits.compile_timeout_s" in info.value.message


class GbnfEngine(FakeEngine):
    def info(self) -> Any:
        return replace(INFO, grammar_syntax="gbnf")  # as llama-server's engine says


@pytest.mark.parametrize("syntax", ["lark", "gbnf"])
def test_one_client_s_burst_with_the_same_tools_compiles_once_within_the_deadline(
    syntax: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.chat as chat

    name = "compile_constraint" if syntax == "lark" else "native_constraint"
    real, compiled = getattr(chat, name), []

    def slow(spec: Any, fmt: Any) -> Any:  # a loaded machine: every trip through the pool is slow
        compiled.append(spec)
        time.sleep(0.05)
        return real(spec, fmt)

    monkeypatch.setattr(chat, name, slow)
    settings = load_settings(None, **{"model.path": Path(__file__)})
    served = build_registry(settings, Metrics(), GbnfEngine() if syntax == "gbnf" else FakeEngine()).default()
    tool = Tool(f"t{secrets.token_hex(4)}", "", {"type": "object", "properties": {"a": {"type": "string"}}})
    request = ChatRequest(messages=(Message("user", "hi"),), tools=(tool,), choice=ToolChoice(ChoiceMode.REQUIRED))

    async def burst() -> list[Any]:
        if syntax == "lark":
            asks = [chat.constraint_for(served, request, request.choice, Metrics(), timeout_s=1.0) for _ in range(40)]
        else:
            asks = [chat.gbnf_for(served, request, request.choice, timeout_s=1.0) for _ in range(40)]
        return await asyncio.gather(*asks)  # one InvalidRequest (a 400) fails the test

    # 40 compilations one after another would take 2 s: the 39 behind the first take its result.
    results = asyncio.run(burst())
    assert len(compiled) == 1 and len(results) == 40 and all(r is not None for r in results)


CATASTROPHIC = "^(a+)+b|c"  # Python's re needs ~2^n steps on "a"*n + "c"; RE2 is linear


def test_patterns_match_in_linear_time() -> None:
    validator = SafeValidator({"type": "object", "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}}})
    start = time.perf_counter()
    assert validator.is_valid({"s": "a" * 5000 + "c"})
    assert not validator.is_valid({"s": "a" * 5000})
    assert time.perf_counter() - start < 0.5


SCHEMAS = [
    {"type": "string", "pattern": "^[a-z]{2,4}$"},
    {"type": "string", "pattern": "b+"},  # a search, not a full match
    {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False},
    {
        "type": "object",
        "properties": {"a": {}},
        "patternProperties": {"n$": {"type": "number"}},
        "additionalProperties": {"type": "string"},
    },
]
INSTANCES = [
    "ab",
    "abcd",
    "abcde",
    "",
    "xbbx",
    {"x_1": 1},
    {"x_1": "no"},
    {"y": 1},
    {"a": 1, "pin": 2.5},
    {"a": 1, "pin": "x"},
    {"zz": "s"},
    {"zz": 3},
    {},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_safe_validator_agrees_with_jsonschema(schema: dict[str, Any]) -> None:
    for instance in INSTANCES:
        assert SafeValidator(schema).is_valid(instance) == Draft202012Validator(schema).is_valid(instance), instance


def test_patterns_re2_cannot_take_are_left_to_the_grammar() -> None:
    assert matches("(a)\\1", "anything")  # a backreference: llguidance refuses it at compile time anyway
    assert matches("\\p{L}+", "héllo") and not matches("^\\d+$", "12a")
