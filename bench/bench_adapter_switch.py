"""Adapter switch cost on the llama.cpp engine: time to first token (prefill + one sampled
token) when a request uses the same LoRA adapter as the one before it vs another adapter,
with the same prompt (where the engine would otherwise reuse the cached prefix) and with a new
one (a full prefill either way, so the difference is the switch itself). Also: loading a GGUF
LoRA, and decode speed with and without an adapter. With `--groups`: the batched engine's
adapter groups, tokens/s of a concurrent load all on the base vs mixed over base and two
adapters (sequences in one batch share the context's adapter, so a mix runs group by group).

Builds a seeded random Qwen2 (`--size`), two PEFT LoRAs with random non-zero weights (r=16 on
every linear layer) and converts them with training/export/gguf_lora.py.

    python bench/bench_adapter_switch.py [--size medium] [--reps 30] [--write]
    python bench/bench_adapter_switch.py --groups [--size small] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, pct, write_section  # noqa: E402
from server.engines.base import AdapterFiles, Cancel, Finish, GenerateRequest  # noqa: E402
from server.engines.llamacpp import LlamaCppEngine  # noqa: E402
from server.types import Sampling  # noqa: E402

SIZES = {  # TinySpec fields
    "tiny": {},
    "medium": {
        "hidden_size": 256,
        "num_layers": 4,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 768,
        "initializer_range": 0.02,
    },
    "small": {
        "hidden_size": 512,
        "num_layers": 8,
        "num_heads": 8,
        "num_kv_heads": 2,
        "intermediate_size": 1536,
        "initializer_range": 0.02,
    },
}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FIRST_TOKEN = Sampling(max_tokens=1, temperature=0.0)


def build(size: str, root: Path) -> tuple[Path, list[AdapterFiles], int]:
    """The base GGUF, two converted adapters, and the model's parameter count."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.demo.tiny import TinySpec, build_tiny
    from training.export.gguf_lora import convert_lora

    tiny = build_tiny(root / "base", TinySpec(**SIZES[size]))  # type: ignore[arg-type]
    adapters = []
    for seed, name in enumerate(("a", "b"), start=1):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32),
            LoraConfig(r=16, lora_alpha=16, target_modules=LINEAR),
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(0.02 * torch.randn(param.shape, generator=generator))
        model.save_pretrained(str(root / name))
        gguf = convert_lora(root / name, tiny.hf_dir, root / name / "adapter.gguf").path
        adapters.append(AdapterFiles(name, root / name, gguf))
    return tiny.gguf, adapters, tiny.n_params


def prompt(variant: int, words: int) -> str:
    body = " ".join(f"item{variant}-{i}" for i in range(words))
    return (
        f"<|im_start|>system\nVariant {variant}. Catalogue: {body}<|im_end|>\n"
        "<|im_start|>user\nWhich item fits?<|im_end|>\n<|im_start|>assistant\n"
    )


async def run(engine: LlamaCppEngine, text: str, adapter: str | None, sampling: Sampling = FIRST_TOKEN) -> Finish:
    finish = None
    async for event in engine.generate(GenerateRequest(text, sampling, adapter=adapter), Cancel()):
        if isinstance(event, Finish):
            finish = event
    assert finish is not None
    return finish


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


# Each scenario: (name, first request, measured request); prompts by variant number.
Step = tuple[str | None, int]
SCENARIOS: list[tuple[str, Step, Step]] = [
    ("same adapter, same prompt (prefix reused)", ("a", 0), ("a", 0)),
    ("another adapter, same prompt", ("a", 0), ("b", 0)),
    ("base -> adapter, same prompt", (None, 0), ("a", 0)),
    ("same adapter, new prompt (full prefill)", ("a", 1), ("a", 2)),
    ("another adapter, new prompt", ("a", 1), ("b", 2)),
]


async def measure(engine: LlamaCppEngine, reps: int, words: int) -> list[tuple[str, list[float]]]:
    results: list[tuple[str, list[float]]] = [(name, []) for name, _, _ in SCENARIOS]
    for rep in range(reps + 1):  # the first round warms up and is dropped
        for (_, first, second), (_, times) in zip(SCENARIOS, results, strict=True):
            await run(engine, prompt(first[1], words), first[0])
            ms = await timed(partial(run, engine, prompt(second[1], words), second[0]))
            if rep:
                times.append(ms)
    return results


async def decode_speed(engine: LlamaCppEngine, adapter: str | None, tokens: int, words: int) -> float:
    sampling = Sampling(max_tokens=tokens, temperature=1.0, seed=0)
    speeds = []
    for _ in range(5):
        await run(engine, prompt(9, words), adapter, FIRST_TOKEN)  # prefix cached, adapter set
        start = time.perf_counter()
        finish = await run(engine, prompt(9, words), adapter, sampling)
        speeds.append(finish.completion_tokens / (time.perf_counter() - start))
    return median(speeds)


async def main_async(args: argparse.Namespace) -> str:
    root = Path(tempfile.mkdtemp(prefix="bench_adapter_switch_"))
    load_before = os.getloadavg()[0]
    base, adapters, n_params = build(args.size, root)
    engine = LlamaCppEngine(base, context_length=2048)
    try:
        loads = [await timed(partial(engine.load_adapter, f)) for f in adapters]
        prompt_tokens = (await run(engine, prompt(0, args.words), None)).prompt_tokens
        results = await measure(engine, args.reps, args.words)
        base_tps = await decode_speed(engine, None, args.decode_tokens, args.words)
        lora_tps = await decode_speed(engine, "a", args.decode_tokens, args.words)
    finally:
        await engine.close()
    load_after = os.getloadavg()[0]
    rows = "\n".join(f"| {name} | {min(t):.1f} | {median(t):.1f} | {pct(t, 90):.1f} |" for name, t in results)
    # The switch alone: both rows are full prefills of same-length prompts; their minimums are
    # the least disturbed by other load on the machine.
    switch = min(results[4][1]) - min(results[3][1])
    return (
        f"Model: random Qwen2 `{args.size}` ({n_params / 1e6:.1f}M parameters, F32 GGUF), two LoRAs r=16 on all "
        f"linear layers; prompt {prompt_tokens} tokens; {args.reps} reps per scenario after one warm-up round; "
        f"threads: the engine's default; 1-minute load average {load_before:.1f} before, {load_after:.1f} after "
        "(a shared machine: min is the cost without contention, p90 shows the noise).\n\n"
        "| time to first token, ms (prefill + 1 token) | min | median | p90 |\n|---|---|---|---|\n"
        f"{rows}\n\n"
        f"The switch itself (another minus same adapter, new prompt, minimums): {switch:.1f} ms.\n\n"
        f"Loading a GGUF LoRA: {median(loads):.1f} ms. Decode (median of 5 runs of {args.decode_tokens} tokens): "
        f"{base_tps:.0f} tokens/s base, {lora_tps:.0f} tokens/s with an adapter.\n\n"
        "Each slot's KV cache is keyed by the (adapter, scale) it was computed under, because keys and values "
        "computed under one adapter are wrong under another: a prompt seen only under other weights is "
        "evaluated whole, on a slot of its own (the other weights' cache stays for their next request). The "
        "switch itself is setting the adapter on the llama.cpp context, which re-reserves its graph."
    )


async def group_load(
    engine: LlamaCppEngine, names: list[str | None], concurrency: int, tokens: int, words: int
) -> tuple[float, list[float]]:
    """tokens/s and per-request latencies of len(names) requests, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int, name: str | None) -> int:
        async with gate:
            start = time.perf_counter()
            finish = await run(engine, prompt(i % 4, words), name, Sampling(max_tokens=tokens, temperature=1.0, seed=i))
            latencies.append(time.perf_counter() - start)
            return finish.completion_tokens

    start = time.perf_counter()
    produced = sum(await asyncio.gather(*(one(i, n) for i, n in enumerate(names))))
    return produced / (time.perf_counter() - start), latencies


async def groups_async(args: argparse.Namespace) -> str:
    root = Path(tempfile.mkdtemp(prefix="bench_adapter_groups_"))
    load_before = os.getloadavg()[0]
    base, adapters, n_params = build(args.size, root)
    engine = LlamaCppEngine(base, context_length=2048, threads=1, slots=8)
    loads: dict[str, list[str | None]] = {
        "all base": [None] * 24,
        "all adapter a": ["a"] * 24,
        "mixed base / a / b (round robin)": [None, "a", "b"] * 8,
    }
    results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in loads}
    try:
        for files in adapters:
            await engine.load_adapter(files)
        for _ in range(args.rounds + 1):  # the first round warms every slot's cache and is dropped
            for name, names in loads.items():  # interleaved: machine noise lands on every load
                results[name].append(await group_load(engine, names, 8, args.decode_tokens, args.words))
    finally:
        await engine.close()
    rows = []
    all_base = median([tps for tps, _ in results["all base"][1:]])
    for name, runs in results.items():
        tps = median([t for t, _ in runs[1:]])
        lat = [x for _, lats in runs[1:] for x in lats]
        rows.append(f"| {name} | {tps:.0f} | {tps / all_base:.2f} | {pct(lat, 50):.2f} | {max(lat):.2f} |")
    return (
        f"Model: random Qwen2 `{args.size}` ({n_params / 1e6:.1f}M parameters, F32 GGUF), two LoRAs r=16; the "
        f"batched engine with 8 slots, 1 thread; 24 requests of {args.decode_tokens} tokens per load, 8 at a "
        f"time; median of {args.rounds} interleaved rounds after a warm-up; 1-minute load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (a shared machine).\n\n"
        "| load | tokens/s | vs all base | p50 latency s | max latency s |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nSequences in one batch share the context's adapter set: requests for the "
        "running (adapter, scale) join the batch, others wait at most `SWITCH_PATIENCE_S` (1 s) before the "
        "running group stops taking new sequences, drains and the oldest waiter's group runs (no starvation). "
        "A mix therefore runs in smaller batches than one group, which is the cost shown here."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="medium")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--words", type=int, default=60, help="catalogue words in the system prompt (prompt length)")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--groups", action="store_true", help="measure adapter groups in the batched engine instead")
    p.add_argument("--rounds", type=int, default=3, help="--groups: interleaved rounds")
    p.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = p.parse_args()
    if args.groups:
        body = asyncio.run(groups_async(args))
        print(body)
        if args.write:
            write_section("Adapter groups in the batched llama.cpp engine", body, ("llama_cpp_python", "peft", "gguf"))
        return
    body = asyncio.run(main_async(args))
    print(body)
    if args.write:
        write_section("Adapter switch on llama.cpp", body, ("llama_cpp_python", "peft", "gguf"))


if __name__ == "__main__":
    main()
