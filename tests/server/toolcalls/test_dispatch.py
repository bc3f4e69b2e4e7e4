"""Client-side dispatch: schemas from signatures and pydantic models, validated calls, errors
returned as tool results (never raised); and examples/agent_loop.py run to the end against the
tiny model through the live gateway."""

from __future__ import annotations

import enum
import importlib.util
import json
from types import ModuleType
from typing import Annotated, Any, Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel

from server.toolcalls.dispatch import dispatch, schema_for, tool_specs


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Address(BaseModel):
    city: str
    zip: str | None = None


class Search(BaseModel):
    """Search the catalogue."""

    query: str
    limit: int = 5


class Refund(BaseModel):
    """Refund an order."""

    order_id: int

    def __call__(self) -> dict[str, Any]:
        return {"refunded": self.order_id}


def get_weather(city: Annotated[str, "City name"], unit: Unit = Unit.C, days: int = 1) -> dict[str, Any]:
    """Current weather for a city.

    Not part of the description."""
    return {"city": city, "unit": unit.value, "days": days}


def ship(to: Address, items: list[str], express: Optional[bool] = None) -> str:  # noqa: UP045 - Optional on purpose
    return f"{len(items)} item(s) to {to.city}{' express' if express else ''}"


def explode(reason: str) -> str:
    raise RuntimeError(reason)


TOOLS = [get_weather, ship, Search, Refund, explode]


def _message(*calls: tuple[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(calls)
        ],
    }


def _contents(message: dict[str, Any]) -> list[Any]:
    results = dispatch(message, TOOLS)
    assert [r["role"] for r in results] == ["tool"] * len(results)
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in message["tool_calls"]]
    return [r["content"] for r in results]


def test_specs_from_signatures_and_models() -> None:
    specs = {s["function"]["name"]: s["function"] for s in tool_specs(TOOLS)}
    assert list(specs) == ["get_weather", "ship", "Search", "Refund", "explode"]
    weather = specs["get_weather"]
    assert weather["description"] == "Current weather for a city."
    assert weather["parameters"] == {
        "type": "object",
        "additionalProperties": False,
        "required": ["city"],
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer", "default": 1},
        },
    }
    assert specs["ship"]["parameters"]["properties"]["to"]["required"] == ["city"]
    assert specs["Search"]["description"] == "Search the catalogue."
    assert specs["Search"]["parameters"]["required"] == ["query"]
    for spec in specs.values():  # every schema is a valid Draft 2020-12 schema
        jsonschema.Draft202012Validator.check_schema(spec["parameters"])


@pytest.mark.parametrize(
    "hint, schema",
    [
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal[1, "x"], {"enum": [1, "x"]}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
        (
            tuple[int, str],
            {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2},
        ),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Any, {}),
    ],
)
def test_schema_for_type_hints(hint: Any, schema: dict[str, Any]) -> None:
    assert schema_for(hint) == schema


def test_calls_run_with_converted_arguments() -> None:
    contents = _contents(
        _message(
            ("get_weather", '{"city": "Paris", "unit": "fahrenheit"}'),
            ("ship", {"to": {"city": "Rome"}, "items": ["a", "b"], "express": True}),  # arguments as a dict
            ("Search", '{"query": "lamps"}'),
            ("Refund", '{"order_id": 7}'),
        )
    )
    assert json.loads(contents[0]) == {"city": "Paris", "unit": "fahrenheit", "days": 1}  # Enum in, value out
    assert contents[1] == "2 item(s) to Rome express"  # the pydantic parameter was built
    assert json.loads(contents[2]) == {"query": "lamps", "limit": 5}  # a model instance is the result
    assert json.loads(contents[3]) == {"refunded": 7}  # a callable model is called


@pytest.mark.parametrize(
    "call, error",
    [
        (("nope", "{}"), "unknown tool 'nope'; available tools: Refund, Search, explode, get_weather, ship"),
        (("get_weather", '{"city": 5}'), "invalid arguments for get_weather at city: 5 is not of type 'string'"),
        (("get_weather", '{"city": "x", "mood": 1}'), "invalid arguments for get_weather at (root)"),
        (("get_weather", "{"), "arguments for get_weather are not JSON"),
        (("get_weather", "[1]"), "must be a JSON object"),
        (("explode", '{"reason": "boom"}'), "explode raised RuntimeError: boom"),
        (("Search", '{"query": 3}'), "invalid arguments for Search at query"),
    ],
)
def test_errors_become_tool_results(call: tuple[str, str], error: str) -> None:
    [content] = _contents(_message(call))
    assert error in json.loads(content)["error"]


def test_an_openai_message_object_is_accepted() -> None:
    from openai.types.chat import ChatCompletionMessage

    message = ChatCompletionMessage.model_validate(_message(("get_weather", '{"city": "Oslo"}')))
    [result] = dispatch(message, TOOLS)
    assert result["tool_call_id"] == "call_0" and json.loads(result["content"])["city"] == "Oslo"


def test_a_message_without_calls_needs_no_dispatch() -> None:
    assert dispatch({"role": "assistant", "content": "hi"}, TOOLS) == []


def test_mistakes_in_the_tools_themselves_raise() -> None:
    def untyped(*args: int) -> None: ...

    async def later(x: int) -> None: ...

    def odd(x: complex) -> None: ...

    for tools, match in (
        ([untyped], "by keyword"),
        ([later], "async"),
        ([odd], "unsupported annotation"),
        ([get_weather, get_weather], "unique"),
        ([42], "callable"),
    ):
        with pytest.raises(TypeError, match=match):
            tool_specs(tools)


def test_dispatch_is_pure() -> None:
    """No HTTP client, no openai, no pydantic until a tool is one: usable in any client."""
    import subprocess
    import sys

    code = "import sys, server.toolcalls.dispatch; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    for heavy in ("pydantic", "openai", "httpx", "fastapi", "llama_cpp", "server.api", "server.engines"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy


# --- examples/agent_loop.py against the tiny model ----------------------------------------------


def _example() -> ModuleType:
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "examples" / "agent_loop.py"
    spec = importlib.util.spec_from_file_location("agent_loop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agent_loop_completes_against_the_gateway(client) -> None:  # type: ignore[no-untyped-def]
    agent = _example()
    # Integer arguments end fast even for a random model; the first turn must be a call.
    messages = agent.run_agent(
        client, "tiny", "Where is order 42?", [agent.track_order], first_choice="required", max_steps=3, max_tokens=96
    )
    user, first, *rest = messages
    assert user["role"] == "user" and first["role"] == "assistant"
    [call] = first["tool_calls"][:1]
    assert call["function"]["name"] == "track_order"
    result = rest[0]
    assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
    order_id = json.loads(call["function"]["arguments"])["order_id"]
    expected = {"order_id": order_id, "status": "shipped", "eta_days": 2} if order_id >= 1 else None
    assert json.loads(result["content"]) == expected or "error" in json.loads(result["content"])
    final = messages[-1]
    assert final["role"] == "assistant" and "tool_calls" not in final  # the loop ended on an answer
    assert all(m["role"] in ("assistant", "tool") for m in rest)
