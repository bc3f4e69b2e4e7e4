"""Canonical training records for the training tests (masks, SFT, DPO): one per kind, over two
tools, with the call helper that builds their assistant turns."""

from __future__ import annotations

from typing import Any

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
ORDER = {
    "type": "function",
    "function": {
        "name": "order_status",
        "description": "Status of an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]},
    },
}
TOOLS = [WEATHER, ORDER]


def call(name: str, args: dict[str, Any], id: str = "c1") -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def record(kind: str, *messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages), "tools": TOOLS, "meta": {"id": kind, "kind": kind, "source": "test"}}


SINGLE = record(
    "single",
    {"role": "user", "content": "Weather in Paris, in celsius?"},
    {"role": "assistant", "content": None, "tool_calls": [call("get_weather", {"city": "Paris", "unit": "c"})]},
)
PARALLEL = record(
    "parallel",
    {"role": "user", "content": "Weather in Oslo and order 7?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [call("get_weather", {"city": "Oslo"}), call("order_status", {"order_id": 7}, "c2")],
    },
)
MULTI_TURN = record(
    "multi_turn",
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Where is order 42?"},
    {"role": "assistant", "content": None, "tool_calls": [call("order_status", {"order_id": 42})]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
    {"role": "assistant", "content": "Order 42 has shipped."},
)
NO_TOOL = record(
    "no_tool_chitchat",
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
)
ERROR_RECOVERY = record(
    "error_recovery",
    {"role": "user", "content": "Status of order 9001?"},
    {"role": "assistant", "content": None, "train": False, "tool_calls": [call("order_status", {"order_id": "9001"})]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"error": "order_id must be an integer"}'},
    {"role": "assistant", "content": None, "tool_calls": [call("order_status", {"order_id": 9001}, "c2")]},
)
RECORDS = [SINGLE, PARALLEL, MULTI_TURN, NO_TOOL, ERROR_RECOVERY]
