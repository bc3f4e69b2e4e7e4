"""BFCL before and after the demo adapter: does training on the support catalogue cost general tool
calling? One real gateway serves the base GGUF and the adapter (`python -m training build-demo`
wrote it to adapters/support-demo); both answer the same BFCL entries with `tool_choice` auto,
scored by BFCL's AST checker (simple, multiple) and by whether a call was made (irrelevance).

    python bench/bench_demo_bfcl.py [--adapters adapters] [--limit 100] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import exit_on_sigterm, write_section  # noqa: E402
from server.adapters.manifest import read_manifest  # noqa: E402
from server.serving.catalogue import MODELS_DIR  # noqa: E402
from server.serving.fetch import resolve  # noqa: E402
from training.evaluation.evaluate import run_eval  # noqa: E402
from training.evaluation.gateway import served_gateway  # noqa: E402
from training.evaluation.generate import EndpointBackend, SampleSettings  # noqa: E402
from training.evaluation.items import bfcl_items  # noqa: E402

CATEGORIES = ("simple_python", "multiple", "irrelevance")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", type=Path, default=Path("adapters"))
    p.add_argument("--adapter", default="support-demo")
    p.add_argument("--limit", type=int, default=100, help="entries per category")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/bench-demo-bfcl"))
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    exit_on_sigterm()
    manifest = read_manifest(args.adapters / args.adapter)
    gguf = resolve(Path(manifest.base_model.id), MODELS_DIR)
    settings = SampleSettings(max_tokens=256, seed=0)
    scores: dict[tuple[str, str], dict[str, float]] = {}
    with served_gateway(gguf, args.adapters, args.out / "gateway.log", threads=os.cpu_count()) as url:
        for model in ("base", args.adapter):
            backend = EndpointBackend(url, model, tool_choice="auto", concurrency=args.concurrency)
            for category in CATEGORIES:
                items = bfcl_items(category, args.limit)
                metrics = run_eval(items, backend, settings, args.out / model / category)
                overall = metrics["overall"]
                scores[(model, category)] = {
                    "n": len(items),
                    "ast": metrics.get("bfcl", {}).get("mean") or 0.0,
                    "valid": overall.get("valid_call_rate") or 0.0,
                    "false": overall.get("false_call_rate") or 0.0,
                }
                print(model, category, scores[(model, category)], flush=True)
            backend.close()
    rows = ["| category | entries | base | + adapter | change |", "|---|---:|---:|---:|---:|"]
    for category in CATEGORIES:
        key = "false" if category == "irrelevance" else "ast"
        base, tuned = scores[("base", category)][key], scores[(args.adapter, category)][key]
        what = "false-call rate" if key == "false" else "AST accuracy"
        rows.append(
            f"| {category} ({what}) | {scores[('base', category)]['n']:.0f} | {base:.2f} | {tuned:.2f} "
            f"| {tuned - base:+.2f} |"
        )
    text = (
        f"Base `{manifest.base_model.id}` alone and with the `{args.adapter}` adapter, one gateway, "
        f"`tool_choice` auto, greedy, the first {args.limit} entries of each category, "
        f"{args.concurrency} requests in flight. For irrelevance lower is better.\n\n" + "\n".join(rows)
    )
    print(text)
    if args.write:
        write_section("BFCL before and after the demo adapter", text, ("llama_cpp_python", "bfcl_eval"))


if __name__ == "__main__":
    main()
