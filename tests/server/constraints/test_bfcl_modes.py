"""The guarantee over real schemas: for function sets taken from BFCL's data, every
tool_choice mode through the live gateway returns only calls that parse and validate;
`required` and named always call (unless cut by max_tokens, which is then reported as
`length` and never returned as a call); `none` never calls; `parallel_tool_calls=false`
never yields two. The tiny random model makes no effort to be right: the grammar must."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import jsonschema
import openai
import pytest

from training.evaluation import bfcl

SETS_PER_CATEGORY = 20
CATEGORIES = [
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "irrelevance",
    "simple_java",
    "simple_javascript",
]
MAX_TOKENS = 400  # for calls: a random model writes long strings
TEXT_TOKENS = 60  # text modes only need to show that no call appears


def _function_sets() -> list[tuple[str, list[dict[str, Any]], str]]:
    sets = []
    for category in CATEGORIES:
        for record in bfcl.load_category(category)[:SETS_PER_CATEGORY]:
            question = record["question"][0][-1]["content"]
            tools = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in (bfcl.to_tool(doc) for doc in record["function"])
            ]
            sets.append((record["id"], tools, question))
    return sets


FUNCTION_SETS = _function_sets()
MODES = ["auto", "required", "named", "none", "single"]


def _request(client: openai.OpenAI, tools: list[dict[str, Any]], question: str, mode: str, seed: int) -> Any:
    kw: dict[str, Any] = {"tool_choice": mode}
    if mode == "named":
        kw["tool_choice"] = {"type": "function", "function": {"name": tools[-1]["function"]["name"]}}
    if mode == "single":
        kw = {"tool_choice": "required", "parallel_tool_calls": False}
    budget = TEXT_TOKENS if mode in ("auto", "none") else MAX_TOKENS
    return client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": question}],
        tools=tools,
        seed=seed,
        max_tokens=budget,
        temperature=0.7,
        **kw,
    )


def _check(mode: str, tools: list[dict[str, Any]], response: Any) -> str:
    """Asserts the mode's contract; returns an outcome label for the tally."""
    choice = response.choices[0]
    calls = choice.message.tool_calls or []
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for call in calls:
        assert call.function.name in schemas
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    if mode == "none":
        assert not calls
    if mode == "single":
        assert len(calls) <= 1
    if mode == "named":
        assert all(c.function.name == tools[-1]["function"]["name"] for c in calls)
    if choice.finish_reason == "length":
        return "truncated"
    if mode in ("required", "named", "single"):
        assert calls and choice.finish_reason == "tool_calls"
    return "call" if calls else "text"


@pytest.mark.slow
def test_every_mode_holds_over_bfcl_function_sets(client: openai.OpenAI) -> None:
    assert len(FUNCTION_SETS) >= 200
    tally: Counter[tuple[str, str]] = Counter()
    seconds: Counter[str] = Counter()
    refused: list[str] = []
    for i, (set_id, tools, question) in enumerate(FUNCTION_SETS):
        for mode in MODES:
            start = time.perf_counter()
            try:
                response = _request(client, tools, question, mode, seed=i)
            except openai.BadRequestError as exc:
                # Only an unenforceable schema or an over-long prompt may be refused, with the reason.
                assert "tools[" in str(exc) or "context" in str(exc), exc
                refused.append(f"{set_id}: {exc}")
                break
            tally[(mode, _check(mode, tools, response))] += 1
            seconds[mode] += time.perf_counter() - start
    served = len(FUNCTION_SETS) - len(refused)
    print(
        f"\n{served} function sets served, {len(refused)} refused; outcomes: {dict(tally)}; "
        f"seconds per mode: { {m: round(s) for m, s in seconds.items()} }"
    )
    assert served >= 200
    for mode in ("required", "named", "single"):
        # Cut calls are legal (a random model writes long strings), but most must complete,
        # or "always calls" would be tested on too few answers.
        assert tally[(mode, "call")] >= 0.5 * served, (mode, tally)
