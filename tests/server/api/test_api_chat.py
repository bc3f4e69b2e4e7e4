"""/v1/chat/completions end to end: uvicorn on loopback, the official openai client, the tiny
random-weight model in llama.cpp. The model is random, so these tests check what the gateway
guarantees whatever the model does: every mode's contract, shapes, and stream == non-stream."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.support.live import PING, TOOLS, TRACK, WEATHER

MESSAGES = [{"role": "user", "content": "What's the weather in Paris, and where is order 42?"}]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in TOOLS}
SEEDS = range(8)


def _calls(choice) -> list:  # type: ignore[no-untyped-def]
    return list(choice.message.tool_calls or [])


def _assert_valid(calls) -> None:  # type: ignore[no-untyped-def]
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in SCHEMAS
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _agrees(choice) -> None:  # type: ignore[no-untyped-def]
    """finish_reason never contradicts the body."""
    if choice.finish_reason == "tool_calls":
        assert _calls(choice)
    elif choice.finish_reason == "stop":
        assert not _calls(choice)


@pytest.mark.parametrize("seed", SEEDS)
def test_required_always_calls_declared_tools(client, seed: int) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required", seed=seed, max_tokens=200
    )
    choice = r.choices[0]
    _agrees(choice)
    if choice.finish_reason != "length":
        assert choice.finish_reason == "tool_calls" and _calls(choice)
        assert not choice.message.content
    _assert_valid(_calls(choice))


@pytest.mark.parametrize("seed", SEEDS)
def test_named_calls_exactly_that_function(client, seed: int) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=TOOLS,
        seed=seed,
        max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "track_order"}},
    )
    calls = _calls(r.choices[0])
    if r.choices[0].finish_reason != "length":
        assert [c.function.name for c in calls] == ["track_order"]
    _assert_valid(calls)


@pytest.mark.parametrize("seed", SEEDS)
def test_none_never_calls(client, seed: int) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="none", seed=seed, max_tokens=60
    )
    assert not _calls(r.choices[0])
    assert "<tool_call>" not in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("seed", SEEDS)
def test_parallel_false_never_yields_two(client, seed: int) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        seed=seed,
        max_tokens=200,
    )
    assert len(_calls(r.choices[0])) <= 1
    _assert_valid(_calls(r.choices[0]))


@pytest.mark.parametrize("seed", SEEDS)
def test_auto_returns_text_or_valid_calls(client, seed: int) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, seed=seed, max_tokens=120)
    choice = r.choices[0]
    _agrees(choice)
    _assert_valid(_calls(choice))
    assert r.usage.completion_tokens <= 120 and r.usage.prompt_tokens > 0


def test_tool_without_arguments_gets_empty_object(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=[PING], tool_choice="required", seed=0, max_tokens=50
    )
    [call] = _calls(r.choices[0])[:1]
    assert call.function.name == "ping" and json.loads(call.function.arguments) == {}


def _collect_stream(client, **kw):  # type: ignore[no-untyped-def]
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    content, calls, finish, usage, roles = "", {}, None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            d = ch.delta
            if d.role:
                roles.append(d.role)
            content += d.content or ""
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = tc.id or entry["id"]
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = ch.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish, usage, roles


@pytest.mark.parametrize("mode", ["auto", "required", "none", "named"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_equals_non_stream(client, mode: str, seed: int) -> None:  # type: ignore[no-untyped-def]
    choice = {"type": "function", "function": {"name": "get_weather"}} if mode == "named" else mode
    kw = dict(
        model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=choice, seed=seed, max_tokens=120, temperature=0.8
    )
    whole = client.chat.completions.create(**kw)
    content, calls, finish, usage, roles = _collect_stream(client, **kw)
    msg = whole.choices[0].message
    assert roles == ["assistant"]
    assert content == (msg.content or "")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in msg.tool_calls or []
    ]
    assert all(c["id"] for c in calls)
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_cut_call_is_not_returned(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=[WEATHER], tool_choice="required", seed=3, max_tokens=6
    )
    assert r.choices[0].finish_reason == "length"
    assert not _calls(r.choices[0])


def test_response_format_json_schema(client) -> None:  # type: ignore[no-untyped-def]
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    for seed in range(4):
        r = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            seed=seed,
            max_tokens=60,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )
        if r.choices[0].finish_reason == "stop":
            jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_response_format_json_object(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, seed=1, max_tokens=80, response_format={"type": "json_object"}
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_history_with_tool_results_renders_and_answers(client) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "Where is order 42?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "track_order", "arguments": '{"order_id": 42}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
    ]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=[TRACK], seed=0, max_tokens=30)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_apply_template_shows_tools_and_history(gateway) -> None:  # type: ignore[no-untyped-def]
    body = {
        "messages": [
            {"role": "user", "content": "Where is order 42?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "track_order", "arguments": '{"order_id": 42}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
        ],
        "tools": [TRACK],
    }
    prompt = httpx.post(gateway.base_url + "/apply-template", json=body).json()["prompt"]
    assert '"name": "track_order"' in prompt and "<tools>" in prompt
    # Arguments are rendered once, as an object: never a JSON string inside JSON.
    assert '<tool_call>\n{"name": "track_order", "arguments": {"order_id": 42}}\n</tool_call>' in prompt
    assert "<tool_response>\nshipped\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_apply_template_honours_add_generation_prompt(gateway) -> None:  # type: ignore[no-untyped-def]
    body = {"messages": [{"role": "user", "content": "Where is order 42?"}], "tools": [TRACK]}
    url = gateway.base_url + "/apply-template"
    with_prompt = httpx.post(url, json=body).json()["prompt"]
    without = httpx.post(url, json={**body, "add_generation_prompt": False}).json()["prompt"]
    assert with_prompt.endswith("<|im_start|>assistant\n") and not without.endswith("<|im_start|>assistant\n")
    assert with_prompt == without + "<|im_start|>assistant\n"


def test_models_health_and_metrics(gateway, client) -> None:  # type: ignore[no-untyped-def]
    [model] = client.models.list().data
    assert model.id == "tiny"
    assert httpx.get(gateway.base_url + "/health").json()["status"] == "ok"
    client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required", seed=0, max_tokens=120
    )
    text = httpx.get(gateway.base_url + "/metrics").text
    assert "callgate_tool_calls_total{" in text and 'mode="required"' in text
    assert "callgate_request_duration_seconds_bucket" in text
    assert 'callgate_constraint_cache_total{result="hit"}' in text
