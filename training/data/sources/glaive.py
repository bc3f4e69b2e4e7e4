"""Glaive function-calling v2 rows (glaiveai/glaive-function-calling-v2): `system` ("SYSTEM: ...
-" followed by the function schemas as concatenated JSON objects) and `chat`, a transcript of
"USER:", "ASSISTANT:" and "FUNCTION RESPONSE:" turns ending in <|endoftext|>, where a call is
`<functioncall> {"name": ..., "arguments": '{...}'}` with the arguments single-quoted.
"""

from __future__ import annotations

import json
import re

from training.data.sources.common import (
    ConversionError,
    Json,
    function_tool,
    infer_kind,
    loads_loose,
    tool_call,
    trim_to_answer,
)

_TURN = re.compile(r"(?:^|\n)\s*(USER|ASSISTANT|FUNCTION RESPONSE):[ \t]?")
_CALL = "<functioncall>"
_EOT = "<|endoftext|>"


def convert_row(row: Json, where: str) -> Json:
    system, tools = _system(str(row.get("system") or ""))
    messages: list[Json] = [{"role": "system", "content": system}] if system else []
    calls = 0
    parts = _TURN.split(str(row.get("chat") or ""))
    for speaker, text in zip(parts[1::2], parts[2::2], strict=True):
        text = text.replace(_EOT, "").strip()
        if speaker == "USER":
            messages.append({"role": "user", "content": text})
        elif speaker == "FUNCTION RESPONSE":
            last = messages[-1] if messages else {}
            if not last.get("tool_calls"):
                raise ConversionError("a function response without a call before it")
            messages.append({"role": "tool", "tool_call_id": last["tool_calls"][0]["id"], "content": text})
        else:
            messages.append(_assistant(text, f"call_{calls}"))
            calls += "tool_calls" in messages[-1]
    messages = trim_to_answer(messages)
    meta = {"id": f"glaive:{row.get('id', where)}", "kind": infer_kind(messages, tools), "source": "glaive"}
    return {"messages": messages, "tools": tools, "meta": meta}


def _system(text: str) -> tuple[str, list[Json]]:
    """The system text before the schemas, and the schemas as tools."""
    text = text.removeprefix("SYSTEM:").strip()
    start = text.find("{")
    if start < 0:
        return text, []
    decoder, tools, i = json.JSONDecoder(), [], start
    while i < len(text):
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"function schemas in the system prompt are not JSON: {exc.msg}") from None
        tools.append(function_tool(obj))
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
    return text[:start].strip().rstrip("-").strip(), tools


def _assistant(text: str, call_id: str) -> Json:
    if _CALL not in text:
        return {"role": "assistant", "content": text}
    before, _, call_text = text.partition(_CALL)
    call = _call(call_text.strip())
    return {
        "role": "assistant",
        "content": before.strip() or None,
        "tool_calls": [tool_call(call.get("name"), call.get("arguments", {}), call_id)],
    }


def _call(text: str) -> Json:
    # '{"name": "f", "arguments": '{"a": 1}'}': unquote the arguments object, then parse as JSON.
    unquoted = re.sub(r"""("arguments"\s*:\s*)'(.*)'(\s*\}\s*)$""", r"\1\2\3", text, flags=re.DOTALL)
    for candidate in (unquoted, text):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    value = loads_loose(text)
    if not isinstance(value, dict):
        raise ConversionError(f"a function call that is not an object: {text[:80]!r}")
    return value
