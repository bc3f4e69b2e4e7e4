"""OpenAI chat JSONL rows (the fine-tuning format): `messages` with tool_calls whose arguments
are JSON text, `tools` (or the legacy `functions` / `function_call` / role "function"). An
assistant message with "weight": 0 is kept out of the loss ("train": false); text content parts
are joined.
"""

from __future__ import annotations

from typing import Any

from training.data.sources.common import ConversionError, Json, function_tool, infer_kind, tool_call, trim_to_answer


def convert_row(row: Json, where: str) -> Json:
    raw_tools = row.get("tools") or [{"type": "function", "function": f} for f in row.get("functions") or []]
    tools = [function_tool(t) for t in raw_tools]
    raw = row.get("messages")
    if not isinstance(raw, list):
        raise ConversionError("no messages list")
    messages: list[Json] = []
    for m in raw:
        if not isinstance(m, dict):
            raise ConversionError("a message that is not an object")
        messages.append(_message(m, messages))
    messages = trim_to_answer(messages)
    meta = dict(row.get("meta") or {}) | {
        "id": str(row.get("id") or (row.get("meta") or {}).get("id") or f"openai:{where}")
    }
    meta.setdefault("source", "openai")
    meta["kind"] = meta.get("kind") or infer_kind(messages, tools)
    return {"messages": messages, "tools": tools, "meta": meta}


def _message(m: Json, before: list[Json]) -> Json:
    role = {"developer": "system", "function": "tool"}.get(str(m.get("role")), str(m.get("role")))
    out: Json = {"role": role, "content": _text(m.get("content"))}
    if role == "assistant":
        calls = [
            tool_call(
                (c.get("function") or {}).get("name"),
                (c.get("function") or {}).get("arguments", {}),
                str(c.get("id") or f"call_{_count(before) + i}"),
            )
            for i, c in enumerate(m.get("tool_calls") or [])
        ]
        if m.get("function_call"):
            fc = m["function_call"]
            calls.append(tool_call(fc.get("name"), fc.get("arguments", {}), f"call_{_count(before)}"))
        if calls:
            out["tool_calls"] = calls
        if m.get("weight") == 0 or m.get("train") is False:
            out["train"] = False
    if role == "tool":
        out["tool_call_id"] = m.get("tool_call_id") or _last_call_id(before, m.get("name"))
    return out


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise ConversionError(f"content must be text or text parts, got {type(content).__name__}")


def _count(before: list[Json]) -> int:
    return sum(len(m.get("tool_calls", [])) for m in before)


def _last_call_id(before: list[Json], name: Any) -> str:
    calls = [c for m in before for c in m.get("tool_calls", [])]
    named = [c for c in calls if c["function"]["name"] == name]
    if not (named or calls):
        raise ConversionError("a function result without a call before it")
    return str((named or calls)[-1]["id"])
