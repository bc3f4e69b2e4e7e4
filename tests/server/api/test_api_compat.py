"""What common clients send that a strict server might refuse: `model_dump()` of a response sent
back as history (nulls that ask for nothing), bookkeeping fields, reasoning_effort / verbosity;
and the server log says why a request got a 4xx."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from server.api.translate import to_chat_request
from server.api.wire import ChatCompletionRequest
from server.config import LimitsSection
from tests.support.live import TOOLS

ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def test_model_dump_of_a_real_response_is_valid_history(client: Any) -> None:
    for seed in range(6):  # the random model may run out of tokens inside a call; the first seed with one
        first = client.chat.completions.create(
            model="tiny",
            messages=ASK,
            tools=TOOLS[:1],
            tool_choice="required",
            parallel_tool_calls=False,
            seed=seed,
            max_tokens=80,
        )
        if first.choices[0].message.tool_calls:
            break
    assistant = first.choices[0].message.model_dump()
    assert {"annotations", "audio", "function_call", "refusal"} <= assistant.keys()  # the nulls are there
    history: list[Any] = [*ASK, assistant]
    calls = first.choices[0].message.tool_calls or []
    assert calls
    history += [{"role": "tool", "tool_call_id": c.id, "content": "pong"} for c in calls]
    second = client.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert second.choices[0].message.content


def test_bookkeeping_and_hint_fields_are_accepted(client: Any) -> None:
    r = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        max_tokens=4,
        prompt_cache_key="k1",
        safety_identifier="user-hash",
        user="u",
        store=False,
        reasoning_effort="low",
        verbosity="low",
    )
    assert r.choices[0].message.content is not None


def test_a_null_field_with_a_value_is_still_refused(gateway: Any) -> None:
    body = {
        "model": "tiny",
        "max_tokens": 4,
        "messages": [*ASK, {"role": "assistant", "content": "x", "audio": {"id": "audio_1"}}],
    }
    r = httpx.post(gateway.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "audio" in r.json()["error"]["param"]


@pytest.mark.parametrize(
    ("effort", "thinking"), [(None, None), ("none", False), ("minimal", False), ("low", True), ("high", True)]
)
def test_reasoning_effort_sets_a_thinking_switch_only_where_there_is_one(effort: str | None, thinking: Any) -> None:
    wire = ChatCompletionRequest(model="m", messages=ASK, reasoning_effort=effort)
    assert to_chat_request(wire, LimitsSection(), thinking_switch=True).thinking is thinking
    assert to_chat_request(wire, LimitsSection(), thinking_switch=False).thinking is None


def test_the_thinking_switch_reaches_the_template() -> None:
    from server.templates import render, thinking_switch
    from server.types import Message

    template = "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}ok"
    assert thinking_switch(template)
    assert render(template, [Message("user", "hi")], enable_thinking=False) == "<think></think>ok"
    assert render(template, [Message("user", "hi")], enable_thinking=True) == "ok"
    assert render(template, [Message("user", "hi")]) == "ok"


def test_a_4xx_is_logged_with_its_reason(gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = "my private prompt text"
    body = {"model": "tiny", "messages": [{"role": "user", "content": secret}], "n": 3}
    with caplog.at_level(logging.INFO, logger="callgate"):
        r = httpx.post(gateway.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 400
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "callgate" and rec.levelno == logging.INFO]
    hit = [line for line in lines if "/v1/chat/completions -> 400" in line]
    assert hit and "n is not supported" in hit[-1] and "param: n" in hit[-1]
    assert not any(secret in line for line in lines)
