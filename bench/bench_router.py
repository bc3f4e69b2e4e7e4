"""The replica router on loopback, with real llama-servers serving the tiny model.

1. Overhead per request at concurrency 1, interleaved arms, same prompt / seed / max_tokens:
     direct    LlamaServerEngine.generate straight to the replica (the HTTP client alone)
     router    Router([that engine]).generate: choice, accounting, breaker bookkeeping
     gateway   the openai client -> gateway (HTTP, template, parse, validate) -> router -> replica
2. Throughput through the gateway at concurrency N with 1 replica and with 2 replicas (each
   replica one llama.cpp thread and the same slots), requests of a fixed length. Served is a
   larger random-weight model (27M parameters, same tokenizer) so that the replicas, not the
   gateway, are the bottleneck: with the tiny model the gateway's own work per token is as
   large as the model's.

    python bench/bench_router.py [--n 200] [--concurrency 8] [--seconds 20] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from bench.common import median, pct, write_section  # noqa: E402
from server.engines import llamaserver  # noqa: E402
from server.engines.base import Cancel, Finish, GenerateRequest, Piece  # noqa: E402
from server.engines.remote import Upstream  # noqa: E402
from server.engines.router import Router  # noqa: E402
from server.types import Sampling  # noqa: E402
from tests.support.live import live_gateway  # noqa: E402
from tests.support.upstreams import LLAMA_SERVER, llama_server  # noqa: E402
from training.demo.tiny import TinySpec, build_tiny  # noqa: E402

PROMPT = "<|im_start|>user\nIs the server up?<|im_end|>\n<|im_start|>assistant\n"
MESSAGES = [{"role": "user", "content": "Is the server up?"}]
OVERHEAD_TOKENS = 8
SLOTS = 4
MID = TinySpec(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536)


async def _engine_arm(engine: object, seed: int) -> float:
    request = GenerateRequest(PROMPT, Sampling(max_tokens=OVERHEAD_TOKENS, seed=seed))
    start = time.perf_counter()
    text = ""
    async for event in engine.generate(request, Cancel()):  # type: ignore[attr-defined]
        if isinstance(event, Piece):
            text += event.text
        elif isinstance(event, Finish):
            assert event.completion_tokens > 0
    return time.perf_counter() - start


def overhead(gguf: Path, logs: Path, n: int, warmup: int) -> dict[str, list[float]]:
    with llama_server(gguf, logs, slots=SLOTS, ctx=4096) as server:
        upstream, info, facts = llamaserver.discover([Upstream(server.url, slots=SLOTS)])
        gen = live_gateway(
            gguf,
            **{
                "engine.kind": "llama-server",
                "engine.urls": [server.url],
                "model.served_name": "tiny",
                "engine.health_interval_s": 60.0,
            },
        )
        live = next(gen)
        loop = asyncio.new_event_loop()
        direct = llamaserver.LlamaServerEngine(upstream, info, facts)
        router = Router([llamaserver.LlamaServerEngine(upstream, info, facts)])
        client = openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0)

        def gateway_arm(seed: int) -> float:
            start = time.perf_counter()
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=OVERHEAD_TOKENS, seed=seed)
            return time.perf_counter() - start

        arms = {
            "direct": lambda seed: loop.run_until_complete(_engine_arm(direct, seed)),
            "router": lambda seed: loop.run_until_complete(_engine_arm(router, seed)),
            "gateway": gateway_arm,
        }
        names = list(arms)
        for i in range(warmup):
            for name in names:
                arms[name](10_000 + i)
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(n):
            order = names[i % 3 :] + names[: i % 3]
            for name in order:
                times[name].append(arms[name](i) * 1e3)
        client.close()
        loop.run_until_complete(direct.close())
        loop.run_until_complete(router.close())
        loop.close()
        gen.close()
    return times


def throughput(
    gguf: Path, logs: Path, replicas: int, concurrency: int, seconds: float, tokens: int
) -> tuple[float, float, float, int]:
    """(requests/s, tokens/s, p50 latency s, failures) through the gateway."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        servers = [stack.enter_context(llama_server(gguf, logs, slots=SLOTS, ctx=4 * 1024)) for _ in range(replicas)]
        gen = live_gateway(
            gguf,
            **{
                "engine.kind": "llama-server",
                "engine.urls": [s.url for s in servers],
                "model.served_name": "tiny",
                "engine.slots_per_replica": SLOTS,
                "limits.max_queue": 1024,
            },
        )
        live = next(gen)
        stack.callback(gen.close)
        client = stack.enter_context(openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0, timeout=120))
        deadline = time.monotonic() + seconds
        latencies: list[float] = []
        done_tokens = failures = 0

        def worker(k: int) -> None:
            nonlocal done_tokens, failures
            i = 0
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    r = client.chat.completions.create(
                        model="tiny", messages=MESSAGES, max_tokens=tokens, seed=k * 100_000 + i
                    )
                    done_tokens += r.usage.completion_tokens if r.usage else 0
                    latencies.append(time.perf_counter() - start)
                except openai.APIError:
                    failures += 1
                i += 1

        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
        elapsed = time.monotonic() - started
    return len(latencies) / elapsed, done_tokens / elapsed, median(latencies), failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = p.parse_args()
    if not LLAMA_SERVER.is_file():
        sys.exit(f"llama-server is not built at {LLAMA_SERVER}; run `make llama-server`")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny(Path(tmp) / "tiny")
        mid = build_tiny(Path(tmp) / "mid", MID)
        logs = Path(tmp) / "logs"
        times = overhead(tiny.gguf, logs, args.n, args.warmup)
        runs = {r: throughput(mid.gguf, logs, r, args.concurrency, args.seconds, args.tokens) for r in (1, 2)}
    body = report(times, runs, args, mid.n_params)
    body += (
        f"\n\n1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after, on "
        f"{os.cpu_count()} cores: other work on the machine takes cores the second replica would use."
    )
    print(body)
    if args.write:
        write_section("Replica router", body, ("llama_cpp_python", "httpx", "openai", "fastapi", "uvicorn"))


def report(
    times: dict[str, list[float]],
    runs: dict[int, tuple[float, float, float, int]],
    args: argparse.Namespace,
    mid_params: int,
) -> str:
    base = median(times["direct"])
    lines = [
        f"llama-server (llama.cpp's C++ server, built from the llama-cpp-python {_version()} sources) on loopback, "
        f"{SLOTS} slots and one llama.cpp thread per replica; the gateway, the replicas and the client share the "
        "machine's cores.",
        "",
        f"Overhead per request at concurrency 1, tiny model: {args.n} requests per arm, interleaved, "
        f"{OVERHEAD_TOKENS} tokens, same seed per round in every arm; time from send to the whole answer.",
        "",
        "| arm | p50 ms | p90 ms | p99 ms | added at p50 ms |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "direct": "engine -> replica (HTTP client only)",
        "router": "router -> engine -> replica",
        "gateway": "openai client -> gateway -> router -> replica",
    }
    for name, values in times.items():
        added = "" if name == "direct" else f"{median(values) - base:.2f}"
        lines.append(
            f"| {labels[name]} | {median(values):.2f} | {pct(values, 90):.2f} | {pct(values, 99):.2f} | {added} |"
        )
    lines += [
        "",
        f"Throughput through the gateway: a {mid_params / 1e6:.0f}M-parameter random model (the replicas are the "
        f"bottleneck), concurrency {args.concurrency}, {args.tokens}-token answers, {args.seconds:g} s per run.",
        "",
        "| replicas | requests/s | tokens/s | p50 latency s | failures |",
        "|---|---|---|---|---|",
    ]
    for replicas, (rps, tps, p50, failures) in runs.items():
        lines.append(f"| {replicas} | {rps:.1f} | {tps:.0f} | {p50:.3f} | {failures} |")
    one, two = runs[1][1], runs[2][1]
    lines += ["", f"2 replicas / 1 replica: {two / one:.2f}x tokens/s."]
    return "\n".join(lines)


def _version() -> str:
    from importlib import metadata

    return metadata.version("llama_cpp_python")


if __name__ == "__main__":
    main()
