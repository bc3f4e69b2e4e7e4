"""What an evaluation asks: items (a prompt, the tools, the expected answer, a group to report
by) read from canonical JSONL records or from BFCL's categories, and BFCL's own pass rule per
category. Knows nothing of models or backends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.toolcalls import Parsed
from server.types import Message
from training.data.records import BadRecords, Record, read_records, server_messages, server_tools
from training.evaluation import bfcl
from training.evaluation.bfcl_ast import match_calls
from training.evaluation.generate import Prompt
from training.evaluation.verifier import Expected, expected_of

# BFCL's single-turn Python categories (bfcl_eval's "python" collection); "simple" names simple_python.
BFCL_AST = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
BFCL_IRRELEVANCE = ("irrelevance", "live_irrelevance")  # right: no call
BFCL_RELEVANCE = ("live_relevance",)  # right: any call
BFCL_CATEGORIES = BFCL_AST + BFCL_IRRELEVANCE + BFCL_RELEVANCE
ALIASES = {"simple": "simple_python", "live": "live_*", "non_live": "non_live_*", "all": "*"}


@dataclass(frozen=True)
class EvalItem:
    id: str
    group: str  # the record's kind, or the BFCL category
    prompt: Prompt
    expected: Expected
    record: Record | None = None  # the canonical record it came from, if any


def record_item(record: Record) -> EvalItem:
    """A canonical record as an item: its last message is the expected answer."""
    prompt = Prompt(tuple(server_messages(record.messages[:-1])), tuple(server_tools(record)))
    return EvalItem(record.meta.id, record.kind, prompt, expected_of(record), record)


def read_items(path: Path, limit: int | None = None) -> tuple[list[EvalItem], BadRecords]:
    """Items of a JSONL file of canonical records; invalid lines are counted, not raised."""
    records, bad = read_records(path)
    return [record_item(r) for r in records[:limit]], bad


def bfcl_categories(names: Sequence[str]) -> list[str]:
    """Category names with aliases expanded ("simple", "live", "non_live", "all"), checked."""
    out: list[str] = []
    for name in names:
        alias = ALIASES.get(name, name)
        if alias == "*":
            out += BFCL_CATEGORIES
        elif alias.endswith("_*"):
            live = alias == "live_*"
            out += [c for c in BFCL_CATEGORIES if c.startswith("live_") == live]
        elif alias in BFCL_CATEGORIES:
            out.append(alias)
        else:
            raise ValueError(
                f"unsupported BFCL category {name!r}; use one of: {', '.join(BFCL_CATEGORIES)}, or {', '.join(ALIASES)}"
            )
    return list(dict.fromkeys(out))


def bfcl_items(category: str, limit: int | None = None) -> list[EvalItem]:
    """One BFCL category as items: the entry's (single) turn, its functions as tools (names with
    "." served as "_"), the possible answers; no call for irrelevance, any call for relevance."""
    answers = bfcl.load_possible_answers(category)
    items = []
    for entry in bfcl.load_category(category)[:limit]:
        messages = tuple(Message(m["role"], m["content"]) for turn in entry["question"] for m in turn)
        tools = tuple(bfcl.to_tool(doc) for doc in entry["function"])
        if category in BFCL_AST:
            expected = Expected(possible=tuple(answers[entry["id"]]))
        else:
            expected = Expected(any_call=category in BFCL_RELEVANCE)
        items.append(EvalItem(entry["id"], category, Prompt(messages, tools), expected))
    return items


def bfcl_pass(item: EvalItem, parsed: Parsed) -> bool:
    """BFCL's verdict for one answer: the AST match for AST categories; for irrelevance, no
    readable call; for relevance, at least one. BFCL reads calls without schema validation;
    a call it cannot decode (broken JSON, cut off) is no call."""
    readable = [c for c in parsed.calls if c.error is None]
    decodes = len(readable) == len(parsed.calls) and not parsed.unclosed
    if item.group in BFCL_IRRELEVANCE:
        return not (decodes and readable)
    if item.group in BFCL_RELEVANCE:
        return decodes and bool(readable)
    if not decodes:
        return False
    try:
        calls = [(c.name, json.loads(c.arguments)) for c in readable]
    except ValueError:
        return False
    if not all(isinstance(args, dict) for _, args in calls):
        return False
    tools = {t.name: t for t in item.prompt.tools}
    return match_calls(tools, calls, item.expected.possible).ok
