"""Continuous batching, side by side in one run on one model file with one llama.cpp thread
per server: callgate's embedded engine, llama.cpp's own llama-server (`-np SLOTS`), and
callgate in front of that llama-server (`engine.kind: llama-server`). Reports tokens/s and
latency at several concurrencies for text answers and `required` tool calls, grammars on
vs off on the embedded engine, and time to first token at the highest concurrency with one
long prompt among short ones (chunked prefill keeps the short ones flowing).

    python bench/bench_batching.py [--model PATH.gguf] [--requests 16] [--tokens 32] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import exit_on_sigterm, median, pct, write_section  # noqa: E402
from tests.support.upstreams import LLAMA_SERVER, llama_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path("/work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
STORY = "Write a long story about a robot who learns to cook, with many details."
CALL = "What is the weather in Paris right now?"
FIRST_TEXT = re.compile(r'"content":\s*"[^"]')  # a chunk with text, not the empty role chunk
LONG = "Summarise this log.\n" + "".join(
    f"line {i}: order {1000 + i} shipped to warehouse {i % 7}\n" for i in range(115)
)


@dataclass
class Cell:
    arm: str
    mode: str
    concurrency: int
    tokens: int
    seconds: float
    latencies: list[float]

    def row(self) -> str:
        return (
            f"| {self.arm} | {self.mode} | {self.concurrency} | {self.tokens / self.seconds:.1f} "
            f"| {pct(self.latencies, 50):.2f} | {pct(self.latencies, 90):.2f} |"
        )


def body(mode: str, seed: int, max_tokens: int, prompt: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"model": "m", "max_tokens": max_tokens, "temperature": 1.0, "seed": seed}
    if mode == "required":
        return {
            **request,
            "messages": [{"role": "user", "content": prompt or CALL}],
            "tools": [WEATHER],
            "tool_choice": "required",
        }
    return {**request, "messages": [{"role": "user", "content": prompt or STORY}]}


async def run_cell(url: str, arm: str, mode: str, concurrency: int, requests: int, max_tokens: int) -> Cell:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(client: httpx.AsyncClient, seed: int) -> None:
        nonlocal tokens
        async with gate:
            start = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body(mode, seed, max_tokens))
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            tokens += int(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, seed) for seed in range(requests)))
        return Cell(arm, mode, concurrency, tokens, time.perf_counter() - start, latencies)


async def first_tokens(url: str, concurrency: int, max_tokens: int, salt: str) -> tuple[list[float], float]:
    """Streams `concurrency` text requests at once, one with a long prompt; returns the short
    ones' times to first token and the long one's. `salt` opens every prompt: the front arm's
    llama-server must not find them cached from the llama-server arm's turn."""

    async def ttft(client: httpx.AsyncClient, prompt: str, seed: int) -> float:
        start = time.perf_counter()
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body("text", seed, max_tokens, prompt), "stream": True}
        ) as r:
            r.raise_for_status()
            elapsed = float("nan")
            async for line in r.aiter_lines():  # read to the end: the slot stays busy until then
                if elapsed != elapsed and line.startswith("data: ") and FIRST_TEXT.search(line):
                    elapsed = time.perf_counter() - start
        return elapsed

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        prompts = [f"[{salt}] {LONG}"] + [f"[{salt}] {STORY} Variation {i}." for i in range(concurrency - 1)]
        times = await asyncio.gather(*(ttft(client, p, i) for i, p in enumerate(prompts)))
    return list(times[1:]), times[0]


def grammar_ratio(model: Path, args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    """Tokens/s of the embedded engine in this process, grammar off vs on (a text answer
    under the grammar that bans the call opener, as `tool_choice: none` compiles), the same
    prompt (rendered with the tool) and seeds, rounds interleaved: medians per concurrency."""
    from server.constraints import ConstraintSpec, compile_constraint
    from server.engines.base import Cancel, Finish, GenerateRequest, Piece
    from server.engines.llamacpp import LlamaCppEngine
    from server.templates import render
    from server.toolcalls import get_format
    from server.types import ChoiceMode, Message, Sampling, TextFormat, Tool, ToolChoice

    tool = Tool("get_weather", "Current weather in a city.", WEATHER["function"]["parameters"])  # type: ignore[index]
    engine = LlamaCppEngine(model, context_length=args.context, threads=1, slots=args.slots)
    info = engine.info()
    prompt = render(info.chat_template or "", [Message("user", STORY)], [tool])
    spec = ConstraintSpec((tool,), ToolChoice(ChoiceMode.NONE), True, TextFormat(), info.special_tokens)
    grammar = compile_constraint(spec, get_format("hermes")).lark

    async def one(constrained: bool, seed: int) -> int:
        request = GenerateRequest(
            prompt, Sampling(max_tokens=args.tokens, temperature=1.0, seed=seed), grammar if constrained else None
        )
        async for event in engine.generate(request, Cancel()):
            if isinstance(event, Finish):
                return event.completion_tokens
        return 0

    async def rate(constrained: bool, concurrency: int) -> float:
        start = time.perf_counter()
        produced = sum(await asyncio.gather(*(one(constrained, s) for s in range(concurrency))))
        return produced / (time.perf_counter() - start)

    async def text(seed: int) -> str:
        request = GenerateRequest(prompt, Sampling(max_tokens=args.tokens, temperature=1.0, seed=seed), grammar)
        return "".join([e.text async for e in engine.generate(request, Cancel()) if isinstance(e, Piece)])

    async def run_all() -> dict[int, tuple[float, float]]:
        await rate(False, args.slots)  # warm-up: every slot caches the prompt, and
        await rate(True, 1)  # the grammar's tokenizer and compilation are cached
        # Seeded answers alone vs in one batch of all of them (the issue asks whether a seeded
        # answer depends on what else is batched; llama.cpp's kernels could make it so).
        alone = [await text(seed) for seed in range(args.slots)]
        together = await asyncio.gather(*(text(seed) for seed in range(args.slots)))
        same = sum(a == b for a, b in zip(alone, together, strict=True))
        print(f"seeded answers identical alone and batched: {same}/{args.slots}", flush=True)
        out: dict[int, tuple[float, float]] = {0: (same, args.slots)}
        for c in (1, max(args.concurrency)):
            speeds: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for constrained in (False, True):
                    speeds[constrained].append(await rate(constrained, c))
            out[c] = (median(speeds[False]), median(speeds[True]))
            print(f"grammar off/on at {c}: {out[c]}", flush=True)
        await engine.close()
        return out

    return asyncio.run(run_all())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gateway(model: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--model", str(model), "--served-model-name", "m", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def measure(urls: dict[str, str], args: argparse.Namespace) -> list[Cell]:
    """Every cell on every arm, the arms interleaved cell by cell: on a shared machine the load
    drifts, and interleaving lands the drift on all arms alike."""
    cells = []
    for mode in ("text", "required"):
        for url in urls.values():  # warm-up: every slot's prompt cache
            asyncio.run(run_cell(url, "", mode, args.slots, args.slots, args.tokens))
        for c in args.concurrency:
            requests = args.requests if c > 1 else max(4, args.requests // 4)
            for arm, url in urls.items():
                cells.append(asyncio.run(run_cell(url, arm, mode, c, requests, args.tokens)))
                print(cells[-1].row(), flush=True)
    return cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--requests", type=int, default=12, help="requests per cell (a quarter of it at concurrency 1)")
    p.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--slots", type=int, default=8, help="embedded slots and llama-server -np")
    p.add_argument("--context", type=int, default=3072, help="tokens per slot")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of grammar off / on")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    exit_on_sigterm()
    if not LLAMA_SERVER.is_file():
        sys.exit(f"llama-server is not built at {LLAMA_SERVER}: `make llama-server`")
    logs = Path(tempfile.mkdtemp(prefix="bench_batching_"))
    embedded_env = {
        "CALLGATE_MODEL__THREADS": "1",
        "CALLGATE_MODEL__SLOTS": str(args.slots),
        "CALLGATE_MODEL__CONTEXT_LENGTH": str(args.context),
    }
    load_before = os.getloadavg()[0]
    grammar = grammar_ratio(args.model, args)
    front_env = {
        "CALLGATE_ENGINE__KIND": "llama-server",
        "CALLGATE_ENGINE__SLOTS_PER_REPLICA": str(args.slots),
        "CALLGATE_MODEL__CONTEXT_LENGTH": str(args.context),
        # A busy 1-thread llama-server can miss a health check; that is not what is measured.
        "CALLGATE_ENGINE__HEALTH_INTERVAL_S": "30",
        "CALLGATE_ENGINE__BREAKER_FAILURES": "100",
        "CALLGATE_ENGINE__READ_TIMEOUT_S": "600",
    }
    extra = ("--jinja", "--threads-http", str(4 * args.slots))
    unified_env = {**embedded_env, "CALLGATE_MODEL__KV_UNIFIED": "true"}
    with (
        gateway(args.model, embedded_env, logs / "embedded.log") as embedded,
        gateway(args.model, unified_env, logs / "unified.log") as unified,
        llama_server(args.model, logs, slots=args.slots, ctx=args.context * args.slots, extra=extra) as ls,
        gateway(args.model, {**front_env, "CALLGATE_ENGINE__URLS": f'["{ls.url}"]'}, logs / "front.log") as front,
    ):
        urls = {
            "callgate embedded": embedded,
            "callgate embedded, kv_unified": unified,
            "llama-server": ls.url,
            "callgate -> llama-server": front,
        }
        cells = measure(urls, args)
        top = max(args.concurrency)
        ttfts = {arm: asyncio.run(first_tokens(url, top, args.tokens, arm)) for arm, url in urls.items()}
    report(cells, ttfts, grammar, args, load_before)


def report(
    cells: list[Cell],
    ttfts: dict[str, tuple[list[float], float]],
    grammar_speeds: dict[int, tuple[float, float]],
    args: argparse.Namespace,
    load_before: float,
) -> None:
    table = ["| arm | mode | concurrency | tokens/s | p50 s | p90 s |", "|---|---|---|---|---|---|"]
    table += [c.row() for c in cells]
    by = {(c.arm, c.mode, c.concurrency): c for c in cells}
    ratios = [
        "| mode | concurrency | embedded / llama-server tokens/s | p50 | embedded, kv_unified / llama-server "
        "tokens/s | p50 |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("text", "required"):
        for c in args.concurrency:
            s = by[("llama-server", mode, c)]
            cols = []
            for arm in ("callgate embedded", "callgate embedded, kv_unified"):
                e = by[(arm, mode, c)]
                speed = e.tokens / e.seconds / (s.tokens / s.seconds)
                cols.append(f"{speed:.2f} | {pct(e.latencies, 50) / pct(s.latencies, 50):.2f}")
            ratios.append(f"| {mode} | {c} | " + " | ".join(cols) + " |")
    grammar = ["| concurrency | grammar off tokens/s | grammar on tokens/s | on / off |", "|---|---|---|---|"]
    same, total = grammar_speeds.pop(0)
    for c, (off, on) in grammar_speeds.items():
        grammar.append(f"| {c} | {off:.1f} | {on:.1f} | {on / off:.3f} |")
    first = ["| arm | short prompts: median TTFT s | max TTFT s | the long prompt's TTFT s |", "|---|---|---|---|"]
    for arm, (short, long_) in ttfts.items():
        first.append(f"| {arm} | {median(short):.2f} | {max(short):.2f} | {long_:.2f} |")
    note = (
        f"Model {args.model.name}; one llama.cpp thread per server; {args.slots} slots (`-np {args.slots}`), "
        f"{args.context} tokens of context per slot; {args.requests} requests per cell "
        f"({max(4, args.requests // 4)} at concurrency 1), max_tokens {args.tokens}, temperature 1, seeds "
        f"0..n; one warm-up round per arm and mode fills every slot's prompt cache; all four servers up at "
        f"once, the arms interleaved cell by cell. tokens/s = completion "
        f"tokens of the cell / its wall time. A shared 2-core machine (other jobs running; 1-minute load "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after): compare arms within this run only."
    )
    text = "\n\n".join(
        [
            note,
            "\n".join(table),
            "\n".join(ratios),
            "Grammar on vs off, the embedded engine in the bench process (same prompt and seeds, "
            f"{args.rounds} interleaved rounds, medians; on: the text grammar of `tool_choice: none`, "
            "which bans the call opener):",
            "\n".join(grammar),
            f"Seeded answers (grammar on) identical alone and in one batch of {total}: {same:.0f} of {total:.0f}.",
            f"Time to first token at concurrency {max(args.concurrency)}: one ~2,000-token prompt "
            "among short ones, all sent at once, streamed:",
            "\n".join(first),
        ]
    )
    print(text)
    if args.write:
        write_section(
            "Continuous batching: embedded vs llama-server",
            text,
            ("llama_cpp_python", "llguidance", "fastapi", "uvicorn"),
        )


if __name__ == "__main__":
    main()
