"""/v1/responses end to end with the official openai client (`responses.create` / `.stream`):
every tool_choice mode holds as in chat completions, the stream's final response equals the
non-streamed one, history round-trips, and what cannot be served gets a 400 naming it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.support.live import TOOLS

# The Responses API's function tools are flat: {"type": "function", "name", "parameters", ...}.
RTOOLS = [{"type": "function", **t["function"]} for t in TOOLS]
SCHEMAS = {t["name"]: t.get("parameters") or {"type": "object"} for t in RTOOLS}
ASK = "What's the weather in Paris, and where is order 42?"
MODES: dict[str, Any] = {
    "auto": "auto",
    "required": "required",
    "none": "none",
    "named": {"type": "function", "name": "get_weather"},
}


def _calls(response: Any) -> list[Any]:
    return [item for item in response.output if item.type == "function_call"]


def _kw(mode: str, seed: int, **extra: Any) -> dict[str, Any]:
    return dict(
        model="tiny",
        input=ASK,
        tools=RTOOLS,
        tool_choice=MODES[mode],
        max_output_tokens=80,
        temperature=0.8,
        extra_body={"seed": seed},
        **extra,
    )


def _check_mode(mode: str, response: Any) -> None:
    calls = _calls(response)
    for call in calls:
        assert call.call_id.startswith("call_") and call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    if mode == "none":
        assert not calls
    if mode in ("required", "named") and response.status == "completed":
        assert calls
    if mode == "named":
        assert {c.name for c in calls} <= {"get_weather"} and len(calls) <= 1


def _shape(response: Any) -> list[tuple[Any, ...]]:
    """The output without its random ids."""
    return [
        (
            i.type,
            getattr(i, "name", None),
            getattr(i, "arguments", None),
            [c.text for c in getattr(i, "content", None) or []],
        )
        for i in response.output
    ]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_streamed_and_not(client: Any, mode: str) -> None:
    whole = client.responses.create(**_kw(mode, seed=1))
    assert whole.object == "response" and whole.id.startswith("resp_") and whole.store is False
    assert whole.status in ("completed", "incomplete")
    _check_mode(mode, whole)
    with client.responses.stream(**_kw(mode, seed=1)) as stream:
        events = list(stream)
        # The client's helper gives a final response for `completed` only; `incomplete` carries its own.
        final = stream.get_final_response() if whole.status == "completed" else events[-1].response
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == f"response.{whole.status}"
    assert _shape(final) == _shape(whole)  # stream == non-stream for the same seed
    assert final.usage is not None and whole.usage is not None
    assert final.usage.output_tokens == whole.usage.output_tokens
    _check_mode(mode, final)


def test_parallel_false_at_most_one_call(client: Any) -> None:
    for seed in range(3):
        r = client.responses.create(**_kw("required", seed), parallel_tool_calls=False)
        assert len(_calls(r)) <= 1


def test_text_deltas_add_up_to_the_text(client: Any) -> None:
    kw = dict(model="tiny", input="tell me a story", max_output_tokens=30, extra_body={"seed": 4})
    whole = client.responses.create(**kw)
    stream = client.responses.create(stream=True, **kw)
    deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert deltas == whole.output_text and whole.output_text
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"


def test_history_round_trips(client: Any) -> None:
    """The output items of one response, plus function_call_output items, as the next input."""
    first = client.responses.create(**_kw("required", seed=2))
    calls = _calls(first)
    assert calls
    history: list[Any] = [{"role": "user", "content": ASK}, *[i.model_dump() for i in first.output]]
    history += [{"type": "function_call_output", "call_id": c.call_id, "output": '{"ok": true}'} for c in calls]
    second = client.responses.create(
        model="tiny",
        input=history,
        tools=RTOOLS,
        tool_choice="none",
        instructions="Answer briefly.",
        max_output_tokens=10,
    )
    assert not _calls(second) and second.output_text


def test_json_schema_text_format(client: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model="tiny",
        input="a city",
        max_output_tokens=60,
        extra_body={"seed": 0},
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
    )
    if r.status == "completed":
        jsonschema.validate(json.loads(r.output_text), schema)


REFUSED = [
    ("previous_response_id", {"previous_response_id": "resp_x"}, "stateless"),
    ("hosted tool", {"tools": [{"type": "web_search"}]}, "function tools only"),
    (
        "image part",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input_image",
    ),
    ("bad call item", {"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
    ("unknown field", {"best_of": 2}, "best_of"),
    ("empty input", {"input": []}, "no items"),
    (
        "orphan output",
        {"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]},
        "input[0].call_id",
    ),
    (
        "arguments not JSON",
        {"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{"}]},
        "input[0].arguments",
    ),
]


@pytest.mark.parametrize(("name", "extra", "needle"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refusals_are_openai_shaped_400s(gateway: Any, name: str, extra: dict[str, Any], needle: str) -> None:
    body = {"model": "tiny", "input": "hi", **extra}
    r = httpx.post(gateway.v1 + "/responses", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]


def test_unknown_model_raises_in_the_client(client: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")
