"""Every tool-call format end to end: for each family's chat template whose format is
registered, a real gateway (uvicorn, llama.cpp, the tiny random model) with `tool_format: auto`
detects the format and keeps each tool_choice mode's contract, streamed or not, through the
official openai client. One gateway per template (module-scoped), shared by its modes; extra
seeds run in the slow suite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jsonschema
import openai
import pytest

from server.toolcalls import format_names
from tests.support.families import FAMILIES, TEMPLATES_DIR
from tests.support.live import WEATHER, Live, live_gateway

if TYPE_CHECKING:
    from training.demo.tiny import TinyModel

TRACK: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "track_order",
        "description": "Where an order is.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "integer", "minimum": 1}, "express": {"type": "boolean"}},
            "required": ["order_id"],
        },
    },
}
TOOLS = [WEATHER, TRACK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris, and where is order 42?"}]
MODES: dict[str, dict[str, Any]] = {
    "auto": {"tool_choice": "auto"},
    "required": {"tool_choice": "required"},
    "named": {"tool_choice": {"type": "function", "function": {"name": "track_order"}}},
    "none": {"tool_choice": "none"},
    "parallel_false": {"tool_choice": "required", "parallel_tool_calls": False},
}
# One seed per mode in the fast suite (11 gateways x 5 modes x stream/non-stream already);
# more seeds in the slow one.
SEEDS = [pytest.param((0,), id="seed0"), pytest.param((1, 2, 3), id="seeds1-3", marks=pytest.mark.slow)]
# Text modes need only a little text; calls need room for a random model's argument strings.
MAX_TOKENS = {"auto": 64, "none": 48, "required": 160, "named": 160, "parallel_false": 160}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_gateway(request: pytest.FixtureRequest, tiny_model: TinyModel) -> Iterator[tuple[str, Live]]:
    family: str = request.param
    if FAMILIES[family] not in format_names():
        pytest.skip(f"format {FAMILIES[family]!r} (template {family}.jinja) is not registered yet")
    flags = {
        "model.served_name": "tiny",
        "model.chat_template": TEMPLATES_DIR / f"{family}.jinja",
        "model.tool_format": "auto",
    }
    for live in live_gateway(tiny_model.gguf, **flags):
        yield family, live


@pytest.fixture(scope="module")
def oai(family_gateway: tuple[str, Live]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=family_gateway[1].v1, api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def test_format_is_detected_and_shown(family_gateway: tuple[str, Live], oai: openai.OpenAI) -> None:
    family, _ = family_gateway
    [model] = oai.models.list().data
    shown = model.model_dump()
    assert (shown["tool_format"], shown["tool_format_source"]) == (FAMILIES[family], "detected")
    assert shown["tool_call_trigger"]


@pytest.mark.parametrize("seeds", SEEDS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_mode_contract_streamed_and_not(
    family_gateway: tuple[str, Live], oai: openai.OpenAI, mode: str, seeds: tuple[int, ...]
) -> None:
    for seed in seeds:
        kw = {
            "model": "tiny",
            "messages": MESSAGES,
            "tools": TOOLS,
            "seed": seed,
            "max_tokens": MAX_TOKENS[mode],
            **MODES[mode],
        }
        whole = _whole(oai, kw)
        streamed = _streamed(oai, kw)
        assert streamed == whole, f"seed {seed}: stream != non-stream"
        _keeps_contract(mode, *whole)


Answer = tuple[str, list[tuple[str, str]], str]  # content, [(name, arguments)], finish_reason


def _whole(oai: openai.OpenAI, kw: dict[str, Any]) -> Answer:
    choice = oai.chat.completions.create(**kw).choices[0]
    calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    return choice.message.content or "", calls, choice.finish_reason


def _streamed(oai: openai.OpenAI, kw: dict[str, Any]) -> Answer:
    content, finish = "", ""
    calls: dict[int, list[str]] = {}
    for chunk in oai.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, ["", ""])
                entry[0] += (tc.function.name or "") if tc.function else ""
                entry[1] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    return content, [(n, a) for n, a in (calls[i] for i in sorted(calls))], finish


def _keeps_contract(mode: str, content: str, calls: list[tuple[str, str]], finish: str) -> None:
    for name, arguments in calls:
        assert name in SCHEMAS, f"undeclared tool {name!r}"
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])
    if mode in ("required", "named", "parallel_false") and finish != "length":
        assert calls and finish == "tool_calls", (content, finish)
    if mode == "none":
        assert not calls and finish in ("stop", "length")
    if mode == "named":
        assert [name for name, _ in calls] in ([], ["track_order"])
    if mode == "parallel_false":
        assert len(calls) <= 1
    if finish == "stop":
        assert not calls
