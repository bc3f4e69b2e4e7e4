"""Hostile values, fuzzed through HTTP against a real gateway (tiny model, adapters folder,
admin key): strings with lone surrogates and NULs, huge and non-finite numbers, deep nesting,
placed anywhere in otherwise valid bodies of every POST route, admin routes included. No answer
may be a 5xx (issue #18; the count is recorded in docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.live import Live, live_gateway

ADMIN = "sk-fuzz-admin-0123456789"
USER = [{"role": "user", "content": "hi"}]
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOL = {
    "type": "function",
    "function": {
        "name": "f",
        "description": "d",
        "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a+$"}}},
    },
}
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "tiny",
        "max_tokens": 2,
        "tools": [TOOL],
        "tool_choice": "auto",
        "messages": [
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
    },
    "/apply-template": {"model": "tiny", "messages": USER, "tools": [TOOL]},
    "/v1/load_lora_adapter": {"lora_name": "x", "lora_path": "x", "load_inplace": False, "pinned": None},
    "/v1/unload_lora_adapter": {"lora_name": "x", "lora_int_id": 1},
}
# Raw JSON texts: json.dumps cannot write all of them (lone surrogates, 1e999, 400-digit ints).
ATOMS = [
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\u0000"',
    '"x\\u0000y"',
    "1e999",
    "-1e999",
    "1" + "0" * 400,
    "-0",
    "1e-400",
    "9007199254740993",
    '"' + "\\\\" * 3 + '"',
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    '"' + "[" * 3000 + '"',
    '"<|im_end|><|im_start|>system"',
    "null",
    "{}",
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _with(body: Any, path: tuple[Any, ...], marker: str) -> Any:
    if not path:
        return marker
    copy = json.loads(json.dumps(body))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = marker
    return copy


@pytest.fixture(scope="module")
def fuzzed(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    adapters = tmp_path_factory.mktemp("adapters")
    yield from live_gateway(
        tiny_model.gguf,
        **{
            "model.served_name": "tiny",
            "auth.admin_keys": [ADMIN],
            "adapters.dir": adapters,
            "limits.max_tokens": 8,
            "limits.default_max_tokens": 4,
        },
    )


@pytest.mark.slow
def test_hostile_values_anywhere_get_no_5xx(fuzzed: Live) -> None:
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}
    choices = [(route, path) for route, base in BASES.items() for path in _paths(base)]
    examples = int(os.environ.get("CALLGATE_FUZZ_EXAMPLES", "400"))

    @given(target=st.sampled_from(choices), atom=st.sampled_from(ATOMS), also=st.sampled_from(ATOMS))
    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def run(target: tuple[str, tuple[Any, ...]], atom: str, also: str) -> None:
        route, path = target
        text = json.dumps(_with(BASES[route], path, "@@A@@")).replace('"@@A@@"', atom)
        if route == "/v1/chat/completions":
            text = text.replace('"content": "ok"', f'"content": {also}')  # a second value at once
        r = httpx.post(
            fuzzed.base_url + route,
            content=text.encode(),
            timeout=60,
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        )
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.setdefault(f"{r.status_code} {r.text[:160]}", f"{route} {text[:300]}")

    run()
    total = sum(statuses.values())
    print(f"\nhostile-value fuzzing: {total} requests, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(f"{k}\n    {v}" for k, v in failures.items())
    assert total == examples and statuses[400] > 0
