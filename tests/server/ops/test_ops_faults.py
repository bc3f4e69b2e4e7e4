"""Faults and overload against a real gateway: a client that leaves the queue frees its place at
once, an engine failing mid-stream ends the stream with an error the openai client raises (and
is counted), and the next request is served as usual."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import openai
import pytest

from server.admission import Admission
from server.config import load_settings
from server.engines import make_engine
from server.engines.base import Cancel, Engine, EngineInfo, Event, GenerateRequest
from server.errors import EngineError
from tests.support.live import LONG, WEATHER, Live, live_gateway

USER = [{"role": "user", "content": "hi"}]


class FaultyEngine:
    """The real engine, failing on demand: a prompt that says FAULT_GATEWAY (or FAULT_BUG) gets
    an EngineError (or a RuntimeError, an engine bug) after three pieces; FAULT_SLOW paces the
    pieces, so a request holds its slot until its client leaves, on any machine."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.parallelism = 1

    def info(self) -> EngineInfo:
        return self.inner.info()

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        async with contextlib.aclosing(self.inner.generate(request, cancel)) as events:  # type: ignore[type-var]
            count = 0
            async for event in events:
                if count == 3 and "FAULT_GATEWAY" in request.prompt:
                    raise EngineError("injected engine failure")
                if count == 3 and "FAULT_BUG" in request.prompt:
                    raise RuntimeError("injected engine bug")
                count += 1
                if "FAULT_SLOW" in request.prompt:
                    await asyncio.sleep(0.05)
                yield event

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        return await self.inner.token_probabilities(prompt, candidates, adapter, adapter_scale)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture(scope="module")
def faulty(tiny_model: Any) -> Iterator[Live]:
    flags = {"model.path": tiny_model.gguf, "model.served_name": "tiny", "limits.max_queue": 2}
    engine = FaultyEngine(make_engine(load_settings(None, **flags)))
    yield from live_gateway(tiny_model.gguf, engine, **{k: v for k, v in flags.items() if k != "model.path"})


def _gauge(live: Live, name: str) -> float:
    m = re.search(rf'^{name}\{{model="tiny"\}} (\S+)$', httpx.get(live.base_url + "/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def _queue(live: Live) -> Admission:
    return live.app.state.gateway.models.default().admission  # type: ignore[no-any-return]


def _wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def _holding_the_slot(live: Live) -> Iterator[None]:
    """A long streamed answer holds the only engine slot until the block ends (disconnect)."""
    body = {**LONG, "stream": True, "messages": [{"role": "user", "content": "FAULT_SLOW"}]}
    with httpx.Client(timeout=60) as c, c.stream("POST", live.v1 + "/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)
        assert _gauge(live, "callgate_running_requests") == 1
        yield


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_client_leaving_the_queue_frees_its_place_at_once(faulty: Live, stream: bool) -> None:
    with _holding_the_slot(faulty):

        def queued_then_gone() -> None:
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(faulty.v1 + "/chat/completions", json={**LONG, "stream": stream}, timeout=1.0)

        waiter = threading.Thread(target=queued_then_gone)
        waiter.start()
        assert _wait_for(lambda: _queue(faulty).waiting == 1)
        waiter.join()  # the client gave up after 1 s and closed its connection
        assert _wait_for(lambda: _queue(faulty).waiting == 0, timeout=5.0), "place still held"
        assert _queue(faulty).running == 1  # the slot holder is untouched
    assert _wait_for(lambda: _gauge(faulty, "callgate_running_requests") == 0)


def test_full_queue_is_429_with_retry_after(faulty: Live) -> None:
    def wait_then_leave() -> None:
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(faulty.v1 + "/chat/completions", json=LONG, timeout=3.0)

    with _holding_the_slot(faulty):
        waiters = [threading.Thread(target=wait_then_leave) for _ in range(2)]
        for w in waiters:
            w.start()
        assert _wait_for(lambda: _queue(faulty).waiting == 2)
        r = httpx.post(faulty.v1 + "/chat/completions", json=LONG, timeout=10)
        assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["type"] == "rate_limit_error"
        for w in waiters:
            w.join()


def _engine_errors(live: Live) -> float:
    return _gauge(live, "callgate_engine_errors_total")


@pytest.mark.parametrize("marker", ["FAULT_GATEWAY", "FAULT_BUG"])
def test_engine_error_mid_stream_is_an_error_event(faulty: Live, marker: str) -> None:
    before = _engine_errors(faulty)
    client = openai.OpenAI(base_url=faulty.v1, api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": f"{marker} please"}],
        stream=True,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=50,
        seed=2,
    )
    received = 0
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            received += 1
    assert received >= 2  # the failure came after the first token, as a final SSE event
    assert "engine" in str(info.value.message)
    assert _engine_errors(faulty) == before + 1
    after = client.chat.completions.create(
        model="tiny", messages=USER, tools=[WEATHER], tool_choice="required", max_tokens=60, seed=1
    )
    assert after.choices[0].finish_reason in ("tool_calls", "length")  # the next request is served


def test_engine_error_before_the_answer_is_502(faulty: Live) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "FAULT_GATEWAY"}],
        "tools": [WEATHER],
        "tool_choice": "none",
        "max_tokens": 50,
        "seed": 2,
    }
    r = httpx.post(faulty.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 502 and r.json()["error"]["code"] == "engine_error"


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in filter(None, text.split("\n\n")):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_engine_error_mid_stream_in_the_responses_and_messages_grammars(faulty: Live) -> None:
    """The same failure after the first token, as each API's own final error event."""
    ask = [{"role": "user", "content": "FAULT_GATEWAY please"}]
    responses = httpx.post(
        faulty.v1 + "/responses",
        timeout=60,
        json={"model": "tiny", "input": ask, "stream": True, "max_output_tokens": 50, "seed": 2},
    )
    events = _sse_events(responses.text)
    assert events[0][0] == "response.created" and events[-1][0] == "error"
    assert events[-1][1]["code"] == "engine_error" and "engine" in events[-1][1]["message"]
    messages = httpx.post(
        faulty.base_url + "/v1/messages",
        timeout=60,
        json={"model": "tiny", "messages": ask, "stream": True, "max_tokens": 50, "seed": 2},
    )
    events = _sse_events(messages.text)
    assert events[0][0] == "message_start" and events[-1][0] == "error"
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "injected engine failure"}}
    import anthropic

    with (
        anthropic.Anthropic(base_url=faulty.base_url, api_key="unused", max_retries=0) as ac,
        pytest.raises(anthropic.APIError, match="injected engine failure"),
    ):
        for _ in ac.messages.create(
            model="tiny",
            max_tokens=50,
            messages=ask,
            stream=True,  # type: ignore[arg-type]
            extra_body={"seed": 2},
        ):
            pass
