"""Calibrate a model's no-tool threshold on BFCL entries the BFCL bench does not score.

For each prompt the gateway would send (same template, same tool prompt), the embedded engine's
P(call opener) summed over the format's opener and its loose openers, exactly as `auto` with a
threshold reads it (server/chat.py `_decide`). Positives: entries that need a call (simple_python,
multiple, live_simple); negatives: irrelevance and live_irrelevance; all taken after the first
`--skip` entries of each category, which bench_bfcl.py scores. Prints both distributions and, for
each candidate threshold, the share of calls kept and of irrelevant prompts vetoed.

    python bench/calibrate_threshold.py --model qwen2.5-coder-0.5b-instruct --skip 40 --per-category 30
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.chat import ChatRequest, call_probabilities, prompt_for  # noqa: E402
from server.config import load_settings  # noqa: E402
from server.metrics import Metrics  # noqa: E402
from server.serving import catalogue, fetch  # noqa: E402
from server.serving.build import build_registry  # noqa: E402
from server.serving.served import Served  # noqa: E402
from server.types import Message  # noqa: E402
from training.evaluation import bfcl  # noqa: E402

POSITIVE = ["simple_python", "multiple", "live_simple"]
NEGATIVE = ["irrelevance", "live_irrelevance"]
CUTS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


async def p_any(served: Served, category: str, skip: int, n: int) -> list[float]:
    out = []
    for entry in bfcl.load_category(category)[skip : skip + n]:
        tools = tuple(bfcl.to_tool(doc) for doc in entry["function"])
        messages = tuple(Message(m["role"], m["content"]) for m in entry["question"][0])
        prompt = prompt_for(served, ChatRequest(messages=messages, tools=tools))
        out.append((await call_probabilities(served, prompt))[1])
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--skip", type=int, default=40, help="entries per category left to the BFCL bench")
    p.add_argument("--per-category", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    model = catalogue.find(args.model)
    assert model is not None, f"unknown catalogue model {args.model}"
    settings = load_settings(None, **{"model.path": fetch.fetch(model), "model.threads": args.threads})
    registry = build_registry(settings, Metrics())
    served = registry.default()
    pos = [p for c in POSITIVE for p in await p_any(served, c, args.skip, args.per_category)]
    neg = [p for c in NEGATIVE for p in await p_any(served, c, args.skip, args.per_category)]
    print(f"{args.model}: {len(pos)} prompts needing a call, {len(neg)} needing none")
    print("| threshold | calls kept (needing a call) | vetoed (needing none) |\n|---:|---:|---:|")
    for cut in CUTS:
        kept = sum(p >= cut for p in pos) / len(pos)
        vetoed = sum(p < cut for p in neg) / len(neg)
        print(f"| {cut:.2f} | {kept:.2f} | {vetoed:.2f} |")
    await registry.close()


if __name__ == "__main__":
    asyncio.run(main())
