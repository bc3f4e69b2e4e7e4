"""A replica killed mid-run (issue #5's fault test): three real llama-servers with the tiny model
on loopback behind the router inside a real gateway, concurrent streaming requests through the
openai client, one replica SIGKILLed while it holds requests. No request that had not begun to
generate is lost (it moves to a live replica); those that had end with a clean SSE error event;
later traffic goes to the live replicas; the metrics show the dead one."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client.parser import text_string_to_metric_families

from tests.support.adapter_folders import make_adapter
from tests.support.live import live_gateway, serve
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


# -- adapter loads in the failover path (issue #18, item 8) ----------------------------------
# llama-server replicas cannot differ here (their LoRAs are fixed at start and must be the same
# list on every replica), so a load that fails on one replica only is a vLLM matter: two
# loopback stand-ins speaking vLLM's protocol, whose LoRA loads, health, load figure and
# completions each test sets.


@dataclass
class StandIn:
    load_ok: bool = True
    healthy: bool = True
    load_figure: float = 0.0  # vllm:num_requests_running, which the router reads as this replica's load
    fail_completions: int = 0  # the next n completions answer 500
    adapters: set[str] | None = None
    loads: int = 0
    served: list[str | None] | None = None

    def app(self) -> FastAPI:
        app, self.adapters, self.served = FastAPI(), set(), []

        @app.get("/v1/models")
        async def models() -> Any:
            return {"object": "list", "data": [{"id": "tiny", "object": "model", "max_model_len": 512}]}

        @app.get("/health")
        async def health() -> Any:
            return JSONResponse({}, 200 if self.healthy else 503)

        @app.get("/metrics")
        async def metrics() -> Any:
            return PlainTextResponse(f'vllm:num_requests_running{{model_name="tiny"}} {self.load_figure}\n')

        @app.post("/v1/load_lora_adapter")
        async def load(body: dict[str, Any]) -> Any:
            self.loads += 1
            if not self.load_ok:
                return JSONResponse(
                    {
                        "error": {
                            "message": "Loading lora support failed: No adapter found",
                            "type": "BadRequestError",
                            "code": 400,
                        }
                    },
                    400,
                )
            assert self.adapters is not None
            self.adapters.add(body["lora_name"])
            return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

        @app.post("/v1/completions")
        async def completions(body: dict[str, Any]) -> Any:
            assert self.adapters is not None and self.served is not None
            if self.fail_completions:
                self.fail_completions -= 1
                return JSONResponse({"error": {"message": "engine dead", "type": "InternalServerError"}}, 500)
            if body["model"] != "tiny" and body["model"] not in self.adapters:
                return JSONResponse(
                    {
                        "error": {
                            "message": f"The model `{body['model']}` does not exist.",
                            "type": "NotFoundError",
                            "code": 404,
                        }
                    },
                    404,
                )
            self.served.append(body["model"])
            chunk = {
                "choices": [{"text": "ok", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
            return StreamingResponse(
                iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]), media_type="text/event-stream"
            )

        return app


def _chat(base_url: str, model: str) -> httpx.Response:
    return httpx.post(
        base_url + "/v1/chat/completions",
        timeout=60,
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )


def test_adapter_loads_fail_over_and_a_half_open_replica_is_not_left_probing(  # type: ignore[no-untyped-def]
    tiny_model: TinyModel, tmp_path
) -> None:
    adapters = tmp_path / "adapters"
    make_adapter(adapters, "support")
    a, b = StandIn(load_ok=False), StandIn(load_figure=5.0)
    with ExitStack() as stack:
        urls = []
        for stand_in in (a, b):
            url, server, thread = serve(stand_in.app())
            stack.callback(thread.join, 10)
            stack.callback(setattr, server, "should_exit", True)
            urls.append(url)
        flags = {
            "engine.kind": "vllm",
            "engine.urls": urls,
            "engine.tokenizer": tiny_model.hf_dir,
            "engine.verify_grammar": False,
            "model.served_name": "tiny",
            "model.context_length": 512,
            "adapters.dir": adapters,
            "engine.health_interval_s": 0.2,
            "engine.breaker_failures": 1,
            "engine.breaker_open_s": 0.5,
            "engine.retries": 2,
            "limits.max_tokens": 64,
            "limits.default_max_tokens": 16,
        }
        gen = live_gateway(None, **flags)  # type: ignore[arg-type]
        live = next(gen)
        stack.callback(gen.close)
        _wait_until(lambda: metric(live.base_url, "callgate_replica_healthy", urls[1]) == 1)

        # a cannot load the adapter, b can: b serves it.
        assert _chat(live.base_url, "support").status_code == 200 and b.served == ["support"]
        # b restarts and forgets it (404): loaded again on demand, a tried first (b reports more
        # load); a's failed load moves the request on to b instead of failing it.
        b.adapters.clear()  # type: ignore[union-attr]
        loads_a = a.loads
        r = _chat(live.base_url, "support")
        assert r.status_code == 200, r.text
        assert a.loads == loads_a + 1 and b.served == ["support", "support"]

        # a fails one request: its breaker opens (b answers that one), then half-opens; b goes down.
        a.fail_completions = 1
        while metric(live.base_url, "callgate_upstream_errors_total", urls[0], "status") < 1:
            assert _chat(live.base_url, "tiny").status_code == 200
        b.healthy = False
        _wait_until(lambda: metric(live.base_url, "callgate_replica_healthy", urls[1]) == 0)
        time.sleep(0.6)  # a is half-open: the next request to it is the probe
        # The probe is an adapter request whose load fails on a: an error, at once.
        failed = _chat(live.base_url, "support")
        assert failed.status_code >= 500 and "support" in failed.text, failed.text
        # a was not left `probing`: the next request probes it again and is answered there.
        assert _chat(live.base_url, "tiny").status_code == 200 and a.served and a.served[-1] == "tiny"
