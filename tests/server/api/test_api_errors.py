"""Bad input gets a clear 4xx in OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.live import PING, TRACK, WEATHER

USER = [{"role": "user", "content": "hi"}]


def _post(gateway: Any, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(
        gateway.base_url + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
        **kw,
    )


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err  # type: ignore[no-any-return]


CASES = [
    ("malformed json", b'{"model": "tiny", "messages": [', 400, "JSON"),
    ("wrong type", {"model": "tiny", "messages": "hello"}, 400, "messages"),
    ("empty messages", {"model": "tiny", "messages": []}, 400, "messages"),
    ("bad role", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("unknown field", {"model": "tiny", "messages": USER, "best_of": 3}, 400, "best_of"),
    ("n > 1", {"model": "tiny", "messages": USER, "n": 2}, 400, "n"),
    ("logprobs", {"model": "tiny", "messages": USER, "logprobs": True}, 400, "logprobs"),
    ("temperature out of range", {"model": "tiny", "messages": USER, "temperature": 7}, 400, "temperature"),
    ("max_tokens above limit", {"model": "tiny", "messages": USER, "max_tokens": 10**6}, 400, "max_tokens"),
    (
        "invalid tool schema",
        {
            "model": "tiny",
            "messages": USER,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}],
        },
        400,
        "JSON Schema",
    ),
    ("duplicate tool names", {"model": "tiny", "messages": USER, "tools": [WEATHER, WEATHER]}, 400, "twice"),
    (
        "bad tool name",
        {"model": "tiny", "messages": USER, "tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]},
        400,
        "name",
    ),
    (
        "named tool not declared",
        {
            "model": "tiny",
            "messages": USER,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
        400,
        "nope",
    ),
    ("required without tools", {"model": "tiny", "messages": USER, "tool_choice": "required"}, 400, "required"),
    (
        "tool message without call",
        {"model": "tiny", "messages": USER + [{"role": "tool", "tool_call_id": "call_x", "content": "42"}]},
        400,
        "call_x",
    ),
    (
        "history arguments not json",
        {
            "model": "tiny",
            "messages": USER
            + [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "ping", "arguments": "{oops"}}],
                }
            ],
        },
        400,
        "arguments",
    ),
    (
        "image content",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
        },
        400,
        "content",
    ),
    (
        "json_schema without schema",
        {"model": "tiny", "messages": USER, "response_format": {"type": "json_schema"}},
        400,
        "json_schema",
    ),
    (
        "unsupported schema keyword",
        {
            "model": "tiny",
            "messages": USER,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"a": {"type": "string", "format": "uuid", "contentMediaType": "image/png"}},
                        },
                    },
                }
            ],
        },
        400,
        None,
    ),
]


@pytest.mark.parametrize("name,body,status,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_a_clear_4xx(gateway, name: str, body: Any, status: int, needle: str | None) -> None:  # type: ignore[no-untyped-def]
    err = _error(_post(gateway, body), status)
    assert err["type"] == "invalid_request_error"
    if needle:
        assert needle.lower() in (err["message"] + str(err["param"])).lower()


def test_unknown_model_is_404(gateway) -> None:  # type: ignore[no-untyped-def]
    err = _error(_post(gateway, {"model": "gpt-9", "messages": USER}), 404)
    assert "tiny" in err["message"]  # says what is served


def test_oversized_body_is_413(gateway) -> None:  # type: ignore[no-untyped-def]
    too_long = "x" * (gateway.settings.server.max_body_bytes + 10)
    big = {"model": "tiny", "messages": [{"role": "user", "content": too_long}]}
    _error(_post(gateway, big), 413)


def test_unknown_route_is_openai_shaped_404(gateway) -> None:  # type: ignore[no-untyped-def]
    _error(httpx.get(gateway.base_url + "/v1/nope"), 404)


def test_openai_client_surfaces_errors(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER, WEATHER])
    assert "twice" in str(info.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)


def test_server_still_serves_after_bad_input(gateway, client) -> None:  # type: ignore[no-untyped-def]
    for _, body, _, _ in CASES:
        _post(gateway, body)
    r = client.chat.completions.create(
        model="tiny", messages=USER, tools=[PING, TRACK], tool_choice="required", seed=0, max_tokens=60
    )
    assert r.choices[0].finish_reason in ("tool_calls", "length")
