"""/v1/messages end to end with the official anthropic client (`messages.create` / `.stream`):
Anthropic's tool_choice modes (auto, any, tool, none, disable_parallel_tool_use) hold, the stream
equals the non-streamed message, tool_result history is taken, count_tokens counts, and errors
come in Anthropic's shape (so the client raises its own exception types)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.support.live import TOOLS, live_gateway

ATOOLS = [
    {
        "name": t["function"]["name"],
        "description": t["function"].get("description", ""),
        "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
    }
    for t in TOOLS
]
SCHEMAS = {t["name"]: t["input_schema"] for t in ATOOLS}
ASK: Any = [{"role": "user", "content": "What's the weather in Paris, and where is order 42?"}]
MODES: dict[str, Any] = {
    "auto": {"type": "auto"},
    "any": {"type": "any"},
    "none": {"type": "none"},
    "tool": {"type": "tool", "name": "get_weather"},
}


@pytest.fixture()
def ac(gateway: Any) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def _kw(mode: str, seed: int) -> dict[str, Any]:
    # This client version has no `temperature` argument; the gateway still takes it in the body.
    return dict(
        model="tiny",
        max_tokens=80,
        messages=ASK,
        tools=ATOOLS,
        tool_choice=MODES[mode],
        extra_body={"seed": seed, "temperature": 0.8},
    )


def _uses(message: Any) -> list[Any]:
    return [b for b in message.content if b.type == "tool_use"]


def _shape(message: Any) -> list[tuple[Any, ...]]:
    """The content without the random tool_use ids."""
    return [
        (b.type, getattr(b, "text", None), getattr(b, "name", None), getattr(b, "input", None)) for b in message.content
    ]


def _check_mode(mode: str, message: Any) -> None:
    uses = _uses(message)
    for use in uses:
        jsonschema.validate(use.input, SCHEMAS[use.name])
    if message.stop_reason != "max_tokens":  # complete calls before a cut are still returned
        assert (message.stop_reason == "tool_use") == bool(uses)
    if mode == "none":
        assert not uses
    if mode in ("any", "tool") and message.stop_reason != "max_tokens":
        assert uses
    if mode == "tool":
        assert {u.name for u in uses} <= {"get_weather"} and len(uses) <= 1


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_streamed_and_not(ac: Any, mode: str) -> None:
    whole = ac.messages.create(**_kw(mode, seed=1))
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    _check_mode(mode, whole)
    with ac.messages.stream(**_kw(mode, seed=1)) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert _shape(final) == _shape(whole) and final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens > 0


def test_disable_parallel_tool_use_at_most_one(ac: Any) -> None:
    for seed in range(3):
        kw = {**_kw("any", seed), "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
        m = ac.messages.create(**kw)
        assert len(_uses(m)) <= 1


def test_tool_result_history_and_count_tokens(ac: Any) -> None:
    first = ac.messages.create(**_kw("any", seed=2))
    uses = _uses(first)
    assert uses
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                *({"type": "tool_result", "tool_use_id": u.id, "content": "sunny"} for u in uses),
                {"type": "text", "text": "Thanks. Summarise."},
            ],
        },
    ]
    second = ac.messages.create(
        model="tiny", max_tokens=10, system="Be brief.", messages=history, tools=ATOOLS, tool_choice={"type": "none"}
    )
    assert not _uses(second) and second.content
    counted = ac.messages.count_tokens(model="tiny", system="Be brief.", messages=history, tools=ATOOLS)
    assert counted.input_tokens == second.usage.input_tokens


def test_errors_are_anthropic_shaped(ac: Any, gateway: Any) -> None:
    with pytest.raises(anthropic.NotFoundError):
        ac.messages.create(model="nope", max_tokens=5, messages=ASK)
    with pytest.raises(anthropic.BadRequestError, match="server tool"):
        ac.messages.create(
            model="tiny", max_tokens=5, messages=ASK, tools=[{"type": "web_search_20250305", "name": "web_search"}]
        )
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\[0\].content\[0\].tool_use_id"):
        ac.messages.create(model="tiny", max_tokens=5, messages=orphan)
    prefill = [*ASK, {"role": "assistant", "content": "The weather is"}]
    with pytest.raises(anthropic.BadRequestError, match="prefill"):
        ac.messages.create(model="tiny", max_tokens=5, messages=prefill)
    r = httpx.post(gateway.base_url + "/v1/messages", json={"model": "tiny", "messages": ASK}, timeout=60)
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_x_api_key_authenticates(tiny_model: Any) -> None:
    flags: dict[str, Any] = {"model.served_name": "tiny", "auth.api_keys": ["sk-test"]}
    for live in live_gateway(tiny_model.gguf, **flags):
        with anthropic.Anthropic(base_url=live.base_url, api_key="sk-test", max_retries=0) as good:
            assert good.messages.count_tokens(model="tiny", messages=ASK).input_tokens > 0
        with (
            anthropic.Anthropic(base_url=live.base_url, api_key="wrong", max_retries=0) as bad,
            pytest.raises(anthropic.AuthenticationError),
        ):
            bad.messages.count_tokens(model="tiny", messages=ASK)


def _tool_calls_in_mode(base_url: str, mode: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    pattern = rf'^callgate_tool_calls_total\{{[^}}]*mode="{mode}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_both_apis_are_in_the_metrics(ac: Any, client: Any, gateway: Any) -> None:
    named, required = (_tool_calls_in_mode(gateway.base_url, m) for m in ("named", "required"))
    ac.messages.create(**_kw("tool", seed=3))
    client.responses.create(
        model="tiny",
        input="hi",
        tools=[{"type": "function", "name": "ping"}],
        tool_choice="required",
        max_output_tokens=40,
    )
    text = httpx.get(gateway.base_url + "/metrics").text
    for endpoint in ("/v1/messages", "/v1/responses"):
        assert f'endpoint="{endpoint}"' in text
    # tool-call outcomes counted by mode, as for chat: Anthropic's `tool` is named, `required` is required
    assert _tool_calls_in_mode(gateway.base_url, "named") > named
    assert _tool_calls_in_mode(gateway.base_url, "required") > required
