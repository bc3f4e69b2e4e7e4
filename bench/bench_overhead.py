"""Gateway overhead at concurrency 1: the same generation (prompt, seed, grammar, max_tokens)
as a direct in-process engine call and through the gateway over real HTTP on loopback, run
interleaved in one process so machine noise hits every arm alike. Both sides use the same
engine object, so the only difference is the gateway (HTTP, validation, orchestration,
serialization) and the client.

Arms, per workload:
  direct       render + compile_constraint (cache warm) + engine.generate to Finish
  httpx        POST /v1/chat/completions, non-streaming, keep-alive httpx.Client, JSON parsed
  openai       the same through the official openai client (what users run)
  sse          stream=true through httpx: first content chunk, and [DONE]

    python bench/bench_overhead.py [--n 200] [--warmup 10] [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import openai  # noqa: E402

from bench.common import median, pct, write_section  # noqa: E402
from server.api.app import create_app  # noqa: E402
from server.config import load_settings  # noqa: E402
from server.constraints import ConstraintSpec, compile_constraint  # noqa: E402
from server.engines import make_engine  # noqa: E402
from server.engines.base import Cancel, Finish, GenerateRequest, Piece  # noqa: E402
from server.metrics import Metrics  # noqa: E402
from server.serving.build import build_registry  # noqa: E402
from server.serving.served import Served  # noqa: E402
from server.templates import render  # noqa: E402
from server.types import ChoiceMode, Message, Sampling, TextFormat, Tool, ToolChoice  # noqa: E402
from tests.support.live import serve  # noqa: E402  (IPPROTO_TCP socket: Nagle off, as python -m server gets)
from training.demo.tiny import build_tiny  # noqa: E402

PING = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Ping a host.",
        "parameters": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
            "additionalProperties": False,
        },
    },
}


@dataclass(frozen=True)
class Workload:
    name: str
    user: str
    max_tokens: int
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | None = None
    parallel: bool | None = None

    def body(self, model: str, seed: int, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": self.user}],
            "max_tokens": self.max_tokens,
            "seed": seed,
        }
        if self.tools:
            body["tools"] = list(self.tools)
        if self.tool_choice:
            body["tool_choice"] = self.tool_choice
        if self.parallel is not None:
            body["parallel_tool_calls"] = self.parallel
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


WORKLOADS = (
    Workload("short call (16 tok, required, 1 tool)", "Is the server up?", 16, (PING,), "required", False),
    Workload("text (64 tok, no tools)", "Tell me a story about a lighthouse.", 64),
)
ARMS = ("direct", "httpx", "openai", "sse")


@dataclass(frozen=True)
class Answer:
    """What a generation said, in a shape every arm can produce: content and (name, arguments)."""

    content: str
    calls: tuple[tuple[str, str], ...]
    finish: str
    completion_tokens: int


@dataclass
class Sample:
    total: float  # seconds, send -> whole answer
    first: float | None = None  # seconds to first content (sse) / first piece (direct)
    call_closed: float | None = None  # direct only: the piece that closes the first call
    answer: Answer | None = None


@dataclass
class Arm:
    samples: list[Sample] = field(default_factory=list)

    def totals_ms(self) -> list[float]:
        return [s.total * 1e3 for s in self.samples]


# -- the direct arm ---------------------------------------------------------------------------


def _tool(d: dict[str, Any]) -> Tool:
    fn = d["function"]
    return Tool(fn["name"], fn.get("description", ""), fn["parameters"])


async def direct(served: Served, w: Workload, seed: int) -> Sample:
    """What the gateway does minus the gateway: render, compile (cache warm), generate."""
    close = served.format.envelope.close
    start = time.perf_counter()
    tools = tuple(_tool(t) for t in w.tools)
    prompt = render(
        served.template,
        [Message("user", w.user)],
        tools,
        add_generation_prompt=True,
        bos_token=served.info.bos_token,
        eos_token=served.info.eos_token,
    )
    mode = ChoiceMode(w.tool_choice) if w.tool_choice else (ChoiceMode.AUTO if tools else ChoiceMode.NONE)
    spec = ConstraintSpec(tools, ToolChoice(mode), w.parallel is not False, TextFormat(), served.info.special_tokens)
    lark = compile_constraint(spec, served.format).lark
    sampling = Sampling(max_tokens=w.max_tokens, temperature=1.0, top_p=1.0, seed=seed)
    text, first, closed, finish = "", None, None, None
    async for ev in served.engine.generate(GenerateRequest(prompt, sampling, lark), Cancel()):
        if isinstance(ev, Piece):
            first = first or time.perf_counter()
            text += ev.text
            if closed is None and close in text:
                closed = time.perf_counter()
        elif isinstance(ev, Finish):
            finish = ev
    end = time.perf_counter()
    assert finish is not None
    parsed = served.format.parse(text)
    calls = tuple((c.name, c.arguments) for c in parsed.calls)
    reason = "tool_calls" if calls and not parsed.unclosed else finish.reason
    answer = Answer(parsed.content, calls, reason, finish.completion_tokens)
    return Sample(
        end - start, None if first is None else first - start, None if closed is None else closed - start, answer
    )


# -- the HTTP arms ----------------------------------------------------------------------------


def _answer(message: dict[str, Any], finish: str, usage: dict[str, Any] | None) -> Answer:
    calls = tuple((c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or [])
    return Answer(message.get("content") or "", calls, finish, (usage or {}).get("completion_tokens", -1))


def via_httpx(client: httpx.Client, body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    data = r.json()
    end = time.perf_counter()
    if r.status_code != 200:
        raise RuntimeError(f"httpx arm: HTTP {r.status_code}: {data}")
    choice = data["choices"][0]
    return Sample(end - start, answer=_answer(choice["message"], choice["finish_reason"], data.get("usage")))


def via_openai(client: openai.OpenAI, body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    resp = client.chat.completions.create(**body)
    end = time.perf_counter()
    choice = resp.choices[0]
    calls = tuple((c.function.name, c.function.arguments) for c in choice.message.tool_calls or [])
    usage = resp.usage.completion_tokens if resp.usage else -1
    return Sample(end - start, answer=Answer(choice.message.content or "", calls, choice.finish_reason or "", usage))


def via_sse(client: httpx.Client, body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    first: float | None = None
    content, calls, finish, usage = "", {}, "", None  # type: ignore[var-annotated]
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"sse arm: HTTP {r.status_code}: {r.text}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(f"sse arm: error event {chunk}")
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                delta = choice["delta"]
                if delta.get("content") or delta.get("tool_calls"):
                    first = first or time.perf_counter()
                content += delta.get("content") or ""
                for tc in delta.get("tool_calls") or []:
                    name, args = calls.get(tc["index"], ("", ""))
                    fn = tc.get("function") or {}
                    calls[tc["index"]] = (name + (fn.get("name") or ""), args + (fn.get("arguments") or ""))
                finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    answer = Answer(content, tuple(calls[i] for i in sorted(calls)), finish, (usage or {}).get("completion_tokens", -1))
    return Sample(end - start, None if first is None else first - start, answer=answer)


# -- the server ------------------------------------------------------------------------------


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    workload: Workload
    arms: dict[str, Arm]
    mismatches: list[str]


def run_workload(
    w: Workload,
    n: int,
    warmup: int,
    served: Served,
    loop: asyncio.AbstractEventLoop,
    http: httpx.Client,
    oai: openai.OpenAI,
) -> Result:
    calls: dict[str, Callable[[int], Sample]] = {
        "direct": lambda seed: loop.run_until_complete(direct(served, w, seed)),
        "httpx": lambda seed: via_httpx(http, w.body(served.name, seed)),
        "openai": lambda seed: via_openai(oai, w.body(served.name, seed)),
        "sse": lambda seed: via_sse(http, w.body(served.name, seed, stream=True)),
    }
    for i in range(warmup):  # grammar compile, llguidance tokenizer, connection, imports
        for arm in ARMS:
            calls[arm](10_000 + i)
    arms = {arm: Arm() for arm in ARMS}
    mismatches: list[str] = []
    for i in range(n):
        seed = i
        order = ARMS[i % len(ARMS) :] + ARMS[: i % len(ARMS)]  # rotate: no arm always follows another
        got = {arm: calls[arm](seed) for arm in order}
        for arm, sample in got.items():
            arms[arm].samples.append(sample)
        ref = got["direct"].answer
        for arm in ARMS[1:]:
            if got[arm].answer != ref:
                mismatches.append(f"seed {seed}: {arm} {got[arm].answer} != direct {ref}")
    return Result(w, arms, mismatches)


def _ms(v: float) -> str:
    return f"{v:.2f}"


def tables(results: dict[str, Result]) -> str:
    rows = [
        "| workload | arm | p50 ms | p90 ms | p99 ms | added at p50 ms | paired Δ median ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        base = res.arms["direct"].totals_ms()
        for arm in ("direct", "httpx", "openai"):
            vals = res.arms[arm].totals_ms()
            added = "" if arm == "direct" else _ms(pct(vals, 50) - pct(base, 50))
            paired = "" if arm == "direct" else _ms(median([b - a for a, b in zip(base, vals, strict=True)]))
            label = {"direct": "A direct engine", "httpx": "B HTTP (httpx)", "openai": "B HTTP (openai client)"}[arm]
            rows.append(
                f"| {name} | {label} | {_ms(pct(vals, 50))} | {_ms(pct(vals, 90))} | {_ms(pct(vals, 99))} "
                f"| {added} | {paired} |"
            )
    rows += [
        "",
        "Streaming (SSE through httpx) against the engine's own events in the direct arm:",
        "",
        "| workload | measure | engine p50 ms | SSE p50 ms | SSE p90 ms | SSE p99 ms | added at p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        direct_s, sse_s = res.arms["direct"].samples, res.arms["sse"].samples
        is_call = bool(res.workload.tools)  # random text may contain a closing tag too
        ref_label = "call closed" if is_call else "first piece"
        ref = [(s.call_closed if is_call else s.first) for s in direct_s]
        firsts = [s.first * 1e3 for s in sse_s if s.first is not None]
        refs = [r * 1e3 for r in ref if r is not None]
        rows.append(
            f"| {name} | first content (engine: {ref_label}) | {_ms(pct(refs, 50))} | {_ms(pct(firsts, 50))} "
            f"| {_ms(pct(firsts, 90))} | {_ms(pct(firsts, 99))} | {_ms(pct(firsts, 50) - pct(refs, 50))} |"
        )
        base, tot = res.arms["direct"].totals_ms(), res.arms["sse"].totals_ms()
        rows.append(
            f"| {name} | total (engine: Finish) | {_ms(pct(base, 50))} | {_ms(pct(tot, 50))} "
            f"| {_ms(pct(tot, 90))} | {_ms(pct(tot, 99))} | {_ms(pct(tot, 50) - pct(base, 50))} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="requests per arm per workload")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads (default 1: with all cores busy-waiting, the event loop "
        "thread has no core left and noise swamps the overhead; 0 = the gateway's default)",
    )
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny(Path(tmp) / "tiny")
        settings = load_settings(None, **{"model.path": model.gguf, "model.threads": args.threads or None})
        metrics = Metrics()
        engine = make_engine(settings)
        registry = build_registry(settings, metrics, engine=engine)
        app = create_app(settings, registry, metrics)
        url, server, thread = serve(app)
        served = app.state.gateway.models.default()
        assert served.engine is engine
        loop = asyncio.new_event_loop()
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        try:
            with (
                httpx.Client(base_url=url, timeout=60) as http,
                openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as oai,
            ):
                results = {w.name: run_workload(w, args.n, args.warmup, served, loop, http, oai) for w in WORKLOADS}
        finally:
            loop.close()
            server.should_exit = True
            thread.join(timeout=30)
        elapsed = time.perf_counter() - started
        load = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"

    table = tables(results)
    print(table)
    outcomes = []
    for name, res in results.items():
        finishes: dict[str, int] = {}
        for s in res.arms["direct"].samples:
            assert s.answer is not None
            finishes[s.answer.finish] = finishes.get(s.answer.finish, 0) + 1
        outcomes.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(finishes.items())))
        if res.mismatches:
            print(
                f"\nWARNING: {name}: {len(res.mismatches)} of {args.n * 3} HTTP answers differ from the direct "
                "engine's for the same seed; first few:",
                file=sys.stderr,
            )
            for line in res.mismatches[:5]:
                print("  " + line, file=sys.stderr)
        else:
            print(f"\n{name}: all {args.n * 3} HTTP answers (httpx, openai, sse) match the direct engine's.")
    print("finish reasons (direct): " + "; ".join(outcomes))
    print(f"measured in {elapsed:.0f} s; 1-minute load average {load}")
    if args.write:
        matched = all(not r.mismatches for r in results.values())
        http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
        added = {
            name: pct(r.arms["httpx"].totals_ms(), 50) - pct(r.arms["direct"].totals_ms(), 50)
            for name, r in results.items()
        }
        met = all(v <= 1.0 for v in added.values())
        note = (
            f"The same generation (prompt, seed, grammar, max_tokens) as a direct in-process engine call "
            f"(render + cached constraint + `engine.generate` to Finish) and through the gateway over HTTP "
            f"on loopback (uvicorn with {http_impl}, in a thread of the same process, serving the same engine "
            f"object; llama.cpp threads: {args.threads or 'all cores'}), {args.n} requests per arm per "
            f"workload, run interleaved (rotating arm order) at concurrency 1 after {args.warmup} warm-up "
            f"rounds; temperature 1 and the same seed per round in every arm. Times are send to whole answer "
            f'parsed, client included. "Added at p50" is p50(HTTP) - p50(direct); "paired Δ" is the '
            f"median of per-seed differences. Streamed calls are sent whole once their closing tag arrives, "
            f"so SSE's first content in the call workload is compared with the engine piece that closes the "
            f"call; in text, the stream parser holds back a tail that could open a call. Answers "
            f"{'matched' if matched else 'did NOT all match'} between all arms for every seed. Target "
            f"(<= 1 ms added at p50, httpx): {'met' if met else 'not met'} on this machine (1-minute load "
            f"average {load} on {os.cpu_count()} cores: other work on the machine inflates every arm)."
        )
        write_section(
            "Gateway overhead at concurrency 1",
            note + "\n\n" + table + "\n\n" + "Finish reasons (direct arm): " + "; ".join(outcomes) + ".",
            (
                "fastapi",
                "starlette",
                "uvicorn",
                "h11",
                "httptools",
                "httpx",
                "openai",
                "pydantic",
                "llama_cpp_python",
                "llguidance",
            ),
        )


if __name__ == "__main__":
    main()
