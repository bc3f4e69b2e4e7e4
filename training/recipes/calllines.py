"""Calls trained as bare JSON lines, for a base whose own call tag is a dead token.

Qwen2.5's template wraps each call in `<tool_call>` tags, but in Qwen2.5-Coder's GGUFs the output
rows of `<tool_call>` and `</tool_call>` are identical: the tag was never trained upstream, and an
adapter trained to write it writes `<|im_start|>` instead and never calls (docs/demo.md). The base
itself writes bare `{"name": ..., "arguments": ...}` lines, which the gateway's hermes format reads
as calls (server/toolcalls/loose.py). With `call_lines` on, every trained call turn is written so.

The history before a trained turn stays as the template renders it, tags and all, because that is
how the gateway renders a client's earlier calls: a record is therefore split into one example per
trained call turn (ending there), the text turns before it trained with it, and one more for the
text turns after the last call. Records are plain dicts here; rendering them is render.py's job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def call_line(call: Mapping[str, Any]) -> str | None:
    """`{"name": ..., "arguments": {...}}` for one record call; None if it is not well formed."""
    fn = call.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        return None
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)


def as_lines(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """The assistant message with its calls as lines of its content (after any text it had); the
    message unchanged when a call is malformed (rendering then refuses it with a reason)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return message
    lines = [call_line(c) if isinstance(c, Mapping) else None for c in calls]
    if any(line is None for line in lines):
        return message
    text = message.get("content")
    head = [text.rstrip()] if isinstance(text, str) and text.strip() else []
    rest = {k: v for k, v in message.items() if k != "tool_calls"}
    return {**rest, "content": "\n".join([*head, *(line for line in lines if line)])}


def _trained(message: Any) -> bool:
    if not isinstance(message, Mapping):
        return False
    return message.get("role") == "assistant" and message.get("train", True) is not False


def line_records(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The record as examples whose trained call turns are bare lines (module doc); a record with
    no trained call, or one rendering would refuse anyway, comes back as it is."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        return [record]
    trained = [i for i, m in enumerate(messages) if _trained(m)]
    cuts = [i for i in trained if messages[i].get("tool_calls")]
    if not cuts:
        return [record]
    out: list[Mapping[str, Any]] = []
    first = 0  # trained turns from here on belong to the next example
    for cut in [*cuts, len(messages)]:
        if cut == len(messages) and not any(i >= first for i in trained):
            break
        kept = [{**m, "train": False} if _trained(m) and i < first else m for i, m in enumerate(messages[:cut])]
        if cut < len(messages):
            kept.append(as_lines(messages[cut]))
        out.append({**record, "messages": kept})
        first = cut + 1
    return out


def line_pair(pair: Mapping[str, Any]) -> Mapping[str, Any]:
    """A preference pair with both answers' calls as bare lines (its history as the template's)."""
    return {
        **pair,
        **{key: as_lines(pair[key]) for key in ("chosen", "rejected") if isinstance(pair.get(key), Mapping)},
    }
