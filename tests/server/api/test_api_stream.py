"""Streaming details: chunk order and a client that disconnects stops the generation."""

from __future__ import annotations

import json
import re
import time

import httpx

from tests.support.live import WEATHER

USER = [{"role": "user", "content": "tell me a long story"}]


def _running(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    m = re.search(r'^callgate_running_requests\{model="tiny"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _generated(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    return sum(float(v) for v in re.findall(r"^callgate_completion_tokens_total\{[^}]*\} (\S+)$", text, re.M))


def test_disconnect_stops_generation(gateway) -> None:  # type: ignore[no-untyped-def]
    before = _generated(gateway.base_url)
    body = {
        "model": "tiny",
        "messages": USER,
        "stream": True,
        "max_tokens": 2000,
        "seed": 3,
        "tools": [WEATHER],
        "tool_choice": "none",
    }
    with httpx.Client(timeout=60) as c, c.stream("POST", gateway.base_url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the generation is under way
    deadline = time.monotonic() + 10
    while _running(gateway.base_url) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _running(gateway.base_url) == 0
    time.sleep(0.2)
    assert _generated(gateway.base_url) - before < 2000  # stopped well before max_tokens


def test_chunk_sequence_is_openai_shaped(gateway) -> None:  # type: ignore[no-untyped-def]
    body = {
        "model": "tiny",
        "messages": USER,
        "stream": True,
        "max_tokens": 40,
        "seed": 1,
        "tools": [WEATHER],
        "tool_choice": "required",
        "stream_options": {"include_usage": True},
    }
    text = httpx.post(gateway.base_url + "/v1/chat/completions", json=body, timeout=60).text
    lines = [ln for ln in text.split("\n\n") if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    usage, finish = chunks[-1], chunks[-2]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0
    assert finish["choices"][0]["finish_reason"] in ("tool_calls", "length")
    heads = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", []) if "id" in tc]
    for head in heads:  # id, type and name come first, arguments after
        assert head["type"] == "function" and head["function"]["name"] == "get_weather"


def test_a_line_separator_in_the_text_never_splits_an_event() -> None:
    """U+2028, U+2029 and NEL are line breaks to str.splitlines (httpx's iter_lines): escaped in
    the JSON, each event stays one `data:` line that parses back to the same text."""
    from server.api.responses import AnswerHeader, ChunkWriter
    from server.chat import ContentEvent

    text = "one\u2028two\u2029three\x85four"
    raw = ChunkWriter(AnswerHeader("tiny"), include_usage=False).event(ContentEvent(text)).decode()
    lines = [line for line in raw.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("data: ")
    assert json.loads(lines[0][len("data: ") :])["choices"][0]["delta"]["content"] == text
