"""Load: many concurrent clients against a real `python -m server` (the tiny model, loopback)
for a bounded time per level. Reports requests, statuses (only 429 is allowed under overload),
latency percentiles, how many requests the gateway held at once (running + queued, sampled
from /metrics) and the gateway's resident memory before and after each level.

    python bench/bench_load.py [--duration 20] [--concurrency 8 32 128] [--model PATH] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import exit_on_sigterm, pct, write_section  # noqa: E402

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
HELD = re.compile(r'^callgate_(?:queue_depth|running_requests)\{model="tiny"\} (\S+)$', re.M)


@dataclass
class Level:
    concurrency: int
    seconds: float
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of 200s
    held: int = 0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0

    @property
    def unexpected(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in ("200", "429"))

    def row(self) -> str:
        ok, busy = self.statuses["200"], self.statuses["429"]
        return (
            f"| {self.concurrency} | {ok + busy + self.unexpected} | {ok} | {busy} | {self.unexpected} "
            f"| {ok / self.seconds:.1f} | {pct(self.latencies, 50):.2f} | {pct(self.latencies, 99):.2f} "
            f"| {self.held} | {self.rss_before_mb:.0f} | {self.rss_after_mb:.0f} |"
        )


HEADER = (
    "| concurrency | requests | 200 | 429 | other | ok/s | p50 s | p99 s | held at once | RSS before MB "
    "| RSS after MB |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def start_gateway(model: Path, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m server` on a free loopback port; returns once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "server", "--model", str(model), "--served-model-name", "tiny", "--port", str(port)]
    proc = subprocess.Popen(
        cmd + (extra or []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the gateway did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_level(url: str, pid: int, concurrency: int, duration: float, max_tokens: int = 24) -> Level:
    level = Level(concurrency, duration, rss_before_mb=rss_mb(pid))
    stop = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        sampler = asyncio.create_task(_sample_held(client, level, stop))
        await asyncio.gather(*(_client(client, level, stop, max_tokens) for _ in range(concurrency)))
        await sampler
    level.rss_after_mb = rss_mb(pid)
    return level


async def _client(client: httpx.AsyncClient, level: Level, stop: float, max_tokens: int) -> None:
    rng = random.Random()
    while time.monotonic() < stop:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "weather in Paris?"}],
            "tools": [WEATHER],
            "tool_choice": "required",
            "max_tokens": max_tokens,
            "seed": rng.randrange(1000),
        }
        start = time.perf_counter()
        try:
            r = await client.post("/v1/chat/completions", json=body)
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        level.statuses[status] += 1
        if status == "200":
            level.latencies.append(time.perf_counter() - start)
        elif status == "429":
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))  # a polite client backs off


async def _sample_held(client: httpx.AsyncClient, level: Level, stop: float) -> None:
    while time.monotonic() < stop:
        text = (await client.get("/metrics")).text
        level.held = max(level.held, int(sum(float(v) for v in HELD.findall(text))))
        await asyncio.sleep(0.25)


def _tiny_model() -> Path:
    from training.demo.tiny import build_tiny

    return Path(build_tiny(Path(tempfile.mkdtemp(prefix="bench_load_"))).gguf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--model", type=Path, help="GGUF file (default: a freshly built tiny model)")
    p.add_argument("--write", action="store_true", help="write the Load section of docs/benchmarks.md")
    args = p.parse_args()
    exit_on_sigterm()
    proc, url = start_gateway(args.model or _tiny_model())
    try:
        asyncio.run(run_level(url, proc.pid, 4, min(5.0, args.duration)))  # warm-up: caches, allocator
        levels = [asyncio.run(run_level(url, proc.pid, c, args.duration)) for c in args.concurrency]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    growth = levels[-1].rss_after_mb - levels[0].rss_before_mb
    body = (
        f"{HEADER}\n" + "\n".join(lv.row() for lv in levels) + f"\n\nGateway RSS growth across the run: "
        f"{growth:+.1f} MB. Default queue: 64 waiting per model (429 past it, clients back off by Retry-After)."
    )
    print(body)
    if args.write:
        write_section("Load", body, ("llama_cpp_python", "llguidance", "fastapi", "uvicorn"))


if __name__ == "__main__":
    main()
