"""A replica killed mid-run (issue #5's fault test): three real llama-servers with the tiny model
on loopback behind the router inside a real gateway, concurrent streaming requests through the
openai client, one replica SIGKILLed while it holds requests. No request that had not begun to
generate is lost (it moves to a live replica); those that had end with a clean SSE error event;
later traffic goes to the live replicas; the metrics show the dead one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live import live_gateway
from tests.support.upstreams import Server, llama_server, need_llama_server
from training.demo.tiny import TinyModel

pytestmark = pytest.mark.slow
SLOTS = 2  # llama-server slots per replica: at most this many requests generate there at once


@dataclass
class Outcome:
    ok: bool
    chunks: int  # content chunks received before the end or the error
    error: str = ""


def ask(client: openai.OpenAI, tokens: int) -> Outcome:
    chunks = 0
    try:
        stream = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Tell me a long story."}],
            max_tokens=tokens,
            temperature=1.0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
        return Outcome(True, chunks)
    except openai.APIError as exc:  # an SSE error event (or an HTTP error) the client understood
        return Outcome(False, chunks, f"{type(exc).__name__}: {exc}")


def metric(base_url: str, name: str, replica: str, kind: str | None = None) -> float:
    wanted = {"replica": replica} | ({"kind": kind} if kind else {})
    for family in text_string_to_metric_families(httpx.get(base_url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    return 0.0


def test_a_killed_replica_loses_no_request_that_had_not_started(tiny_model: TinyModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_llama_server()
    with ExitStack() as stack:
        servers: list[Server] = [
            stack.enter_context(llama_server(tiny_model.gguf, tmp_path, slots=SLOTS, ctx=2048)) for _ in range(3)
        ]
        flags = {
            "engine.kind": "llama-server",
            "engine.urls": [s.url for s in servers],
            "model.served_name": "tiny",
            "engine.slots_per_replica": 4,
            "engine.health_interval_s": 0.3,
            "engine.breaker_failures": 2,
            "engine.retries": 2,
            "limits.max_tokens": 600,
            "limits.default_max_tokens": 100,
        }
        gen = live_gateway(tiny_model.gguf, **flags)
        live = next(gen)
        stack.callback(gen.close)
        victim = servers[1]
        client = stack.enter_context(openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0, timeout=60))

        with ThreadPoolExecutor(24) as pool:
            # The tiny model writes 500 tokens in ~0.2 s on llama-server: enough requests that the
            # burst outlasts a few health-check samples of the outstanding gauge.
            futures = [pool.submit(ask, client, 500) for _ in range(96)]
            _wait_until(lambda: metric(live.base_url, "callgate_replica_outstanding_requests", victim.url) >= 3)
            victim.kill()
            outcomes = [f.result(timeout=60) for f in futures]

        failed = [o for o in outcomes if not o.ok]
        # Only requests that were generating on the victim may fail: at most its slots; the ones
        # queued behind them there had no token yet and were moved to the live replicas.
        assert len(failed) <= SLOTS, [o.error for o in failed]
        assert all("upstream" in o.error or "connection" in o.error.lower() for o in failed), failed
        errors = sum(
            metric(live.base_url, "callgate_upstream_errors_total", victim.url, kind)
            for kind in ("connect", "disconnect")
        )
        assert errors >= 2  # it held requests when it died (not a vacuous test)

        _wait_until(lambda: metric(live.base_url, "callgate_replica_healthy", victim.url) == 0)
        before = sum(
            metric(live.base_url, "callgate_upstream_errors_total", victim.url, k) for k in ("connect", "disconnect")
        )
        later = [ask(client, 20) for _ in range(6)]
        assert all(o.ok for o in later)
        after = sum(
            metric(live.base_url, "callgate_upstream_errors_total", victim.url, k) for k in ("connect", "disconnect")
        )
        assert after == before  # the dead replica is out of rotation: nothing more was sent to it
        for live_replica in (servers[0], servers[2]):
            assert metric(live.base_url, "callgate_replica_healthy", live_replica.url) == 1


def _wait_until(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
