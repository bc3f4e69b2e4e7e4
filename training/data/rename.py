"""Tool renaming ("function masking", as in Hammer, 2024): the same conversation with its tools
and their parameters under invented names, descriptions kept.

A small model trained on a fixed catalogue learns its names by heart, so a tool it has never
seen cannot be named: in the demo the support adapter never wrote `request_refund`, whose pieces
the base had never emitted (docs/demo.md). With a share of the base records renamed,
the name and the argument keys of a call can only come from the tool list, so the base learns to
copy them and to choose a tool by its description. Pure functions of a seeded rng.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.adapters.manifest import atomic_write_text

Record = dict[str, Any]


def invent_name(rng: random.Random, word: Callable[[random.Random], str], parts: tuple[int, int]) -> str:
    """A snake_case identifier of `parts` words (inclusive range)."""
    pieces = [word(rng).lower() for _ in range(rng.randint(*parts))]
    return "_".join("".join(c for c in p if c.isascii() and c.isalnum()) or "x" for p in pieces)


def rename_record(record: Record, rng: random.Random, word: Callable[[random.Random], str]) -> Record:
    """`record` with every tool and top-level parameter renamed, consistently in the tool list,
    the calls, their arguments and the tools' error messages that quote a parameter."""
    out: Record = json.loads(json.dumps(record))
    tools: dict[str, str] = {}
    params: dict[str, dict[str, str]] = {}
    for tool in out.get("tools", []):
        fn = tool["function"]
        new = _fresh(rng, word, (2, 3), set(tools.values()))
        tools[fn["name"]] = new
        schema = fn.get("parameters") or {}
        props = schema.get("properties") or {}
        mapping: dict[str, str] = {}
        for key in props:
            mapping[key] = _fresh(rng, word, (1, 2), set(mapping.values()))
        params[new] = mapping
        fn["name"] = new
        if props:
            schema["properties"] = {mapping[k]: v for k, v in props.items()}
        if "required" in schema:
            schema["required"] = [mapping.get(k, k) for k in schema["required"]]
    by_call: dict[str, dict[str, str]] = {}
    for message in out.get("messages", []):
        for call in message.get("tool_calls") or ():
            fn = call["function"]
            fn["name"] = tools.get(fn["name"], fn["name"])
            mapping = params.get(fn["name"], {})
            fn["arguments"] = {mapping.get(k, k): v for k, v in fn["arguments"].items()}
            by_call[call["id"]] = mapping
        if message.get("role") == "tool" and isinstance(message.get("content"), str):
            for old, new in by_call.get(message.get("tool_call_id", ""), {}).items():
                message["content"] = message["content"].replace(f"'{old}'", f"'{new}'")
    meta = out.get("meta")
    if isinstance(meta, dict) and "tools_called" in meta:
        meta["tools_called"] = [tools.get(n, n) for n in meta["tools_called"]]
    return out


def rename_file(source: Path, target: Path, share: float, seed: int, word: Callable[[random.Random], str]) -> int:
    """Copy a JSONL file of records, renaming a seeded `share` of those with tools; returns how
    many were renamed. The other records are copied unchanged."""
    rng = random.Random(seed)
    lines, renamed = [], 0
    for line in source.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("tools") and rng.random() < share:
            record = rename_record(record, rng, word)
            renamed += 1
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(target, "".join(line + "\n" for line in lines))
    return renamed


def _fresh(rng: random.Random, word: Callable[[random.Random], str], parts: tuple[int, int], taken: set[str]) -> str:
    for _ in range(100):
        name = invent_name(rng, word, parts)
        if name not in taken and name[0].isalpha():
            return name
    return f"{invent_name(rng, word, parts)}_{len(taken)}"
