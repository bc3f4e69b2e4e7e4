"""BFCL entries (questions, function docs, possible answers) as canonical evaluation records.

An entry's prompt is its question turns; its expected answer is an assistant message calling
each ground-truth function with the first acceptable value of every argument (an argument whose
only acceptable value is "" is left out), and `meta.possible_answers` keeps every acceptable
value for scoring. Irrelevance categories expect no call (an empty text answer). Function names
get "." replaced by "_" as in training.evaluation.bfcl.to_tool; types are mapped the same way.
"""

from __future__ import annotations

from typing import Any

from server.templates import tool_dict
from training.data.sources.common import ConversionError, Json, tool_call
from training.evaluation.bfcl import to_tool


def convert_entry(entry: Json, answers: dict[str, Any], category: str) -> Json:
    """One BFCL entry (and its category's {id: ground truth}) as a record dict."""
    entry_id = str(entry.get("id"))
    questions = entry.get("question")
    if not isinstance(questions, list) or len(questions) != 1 or not entry.get("function"):
        raise ConversionError("only single-turn entries with function docs convert (multi-turn ones name classes)")
    tools = [tool_dict(to_tool(doc)) for doc in entry["function"]]
    messages = [{"role": m["role"], "content": m["content"]} for m in questions[0]]
    truth = answers.get(entry_id)
    category = entry_id.rsplit("_", 1)[0] if "_" in entry_id else category  # ids name their category
    if truth is None and "irrelevance" not in category:
        raise ConversionError(f"no possible answer for {entry_id} in category {category}")
    truth = [{name.replace(".", "_"): args for name, args in call.items()} for call in truth or []]
    if truth:
        calls = [
            tool_call(name, _first_values(args), f"call_{i}") for i, c in enumerate(truth) for name, args in c.items()
        ]
        answer: Json = {"role": "assistant", "content": None, "tool_calls": calls}
        kind = "parallel" if len(calls) > 1 else "single"
    else:
        answer, kind = {"role": "assistant", "content": ""}, "no_tool_irrelevant"
    meta = {"id": f"bfcl:{entry_id}", "kind": kind, "source": f"bfcl:{category}", "possible_answers": truth}
    return {"messages": [*messages, answer], "tools": tools, "meta": meta}


def _first_values(args: dict[str, list[Any]]) -> Json:
    out = {}
    for name, acceptable in args.items():
        given = [v for v in acceptable if v != ""]
        if given:
            out[name] = given[0]
    return out
