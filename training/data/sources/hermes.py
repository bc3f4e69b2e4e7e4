"""Hermes function-calling rows (NousResearch/hermes-function-calling-v1): ShareGPT
`conversations` of {"from": system | human | gpt | tool, "value"}. The system turn lists the
tools inside <tools></tools> (JSON or a Python literal); gpt turns hold <tool_call> blocks of
{'arguments': ..., 'name': ...}; tool turns hold <tool_response> blocks of {"name", "content"}.
The Hermes system prompt is dropped (the chat template writes its own tool prompt); a `tools`
column, when present, is preferred to the system turn's list.
"""

from __future__ import annotations

import json
import re
from typing import Any

from training.data.sources.common import (
    ConversionError,
    Json,
    function_tool,
    infer_kind,
    loads_loose,
    tool_call,
    trim_to_answer,
)

_TOOLS = re.compile(r"<tools>\s*(.*?)\s*</tools>", re.DOTALL)
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_RESPONSE = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)
_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def convert_row(row: Json, where: str) -> Json:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ConversionError("no conversations")
    tools = _tools(row, turns)
    messages: list[Json] = []
    pending: list[Json] = []  # calls not answered yet, in order
    for turn in turns:
        speaker, value = turn.get("from"), str(turn.get("value") or "")
        if speaker == "tool":
            messages += _responses(value, pending)
        elif speaker == "system":
            if "<tools>" not in value:
                messages.append({"role": "system", "content": value})
        elif speaker in _ROLES:
            message = _message(_ROLES[str(speaker)], value, len([c for m in messages for c in m.get("tool_calls", [])]))
            pending = list(message.get("tool_calls", [])) or pending
            messages.append(message)
        else:
            raise ConversionError(f"unknown speaker {speaker!r}")
    messages = trim_to_answer(messages)
    meta = {"id": f"hermes:{row.get('id', where)}", "kind": infer_kind(messages, tools), "source": "hermes"}
    for key in ("category", "subcategory", "task"):
        if isinstance(row.get(key), str):
            meta[key] = row[key]
    return {"messages": messages, "tools": tools, "meta": meta}


def _tools(row: Json, turns: list[Json]) -> list[Json]:
    raw: Any = row.get("tools")
    if not raw:
        system = next((str(t.get("value")) for t in turns if t.get("from") == "system"), "")
        # The prompt mentions "<tools></tools>" before the real list: take the longest block.
        raw = max(_TOOLS.findall(system), key=len, default="") or []
    if isinstance(raw, str):
        raw = _tool_list(raw)
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConversionError("tools are not a list")
    return [function_tool(t) for t in raw]


def _tool_list(text: str) -> Any:
    try:
        return loads_loose(text)
    except ConversionError:
        # Some rows list one tool object per line instead of one list.
        return [loads_loose(line) for line in text.splitlines() if line.strip()]


def _message(role: str, value: str, calls_before: int) -> Json:
    if role != "assistant":
        return {"role": role, "content": value}
    blocks = _CALL.findall(value)
    if not blocks:
        return {"role": "assistant", "content": value.strip()}
    calls = []
    for i, block in enumerate(blocks):
        call = loads_loose(block)
        if not isinstance(call, dict):
            raise ConversionError(f"a tool call that is not an object: {block[:80]!r}")
        calls.append(tool_call(call.get("name"), call.get("arguments", {}), f"call_{calls_before + i}"))
    text = _CALL.sub("", value).strip()
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


def _responses(value: str, pending: list[Json]) -> list[Json]:
    blocks = _RESPONSE.findall(value) or [value.strip()]
    if not pending:
        raise ConversionError("a tool response without a call before it")
    out = []
    for i, block in enumerate(blocks):
        try:
            parsed = loads_loose(block)
        except ConversionError:
            parsed = block
        name = parsed.get("name") if isinstance(parsed, dict) else None
        call = next((c for c in pending if c["function"]["name"] == name), pending[min(i, len(pending) - 1)])
        content = parsed.get("content", parsed) if isinstance(parsed, dict) else parsed
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        out.append({"role": "tool", "tool_call_id": call["id"], "content": text})
    return out
