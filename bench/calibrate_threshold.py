"""Calibrate a model's no-tool threshold on BFCL entries the BFCL bench does not score.

For each prompt the gateway would send (same template, same tool prompt), the embedded engine's
P(call opener) summed over the format's opener and its loose openers, exactly as `auto` with a
threshold reads it (training/evaluation/threshold.py, server/chat.py `_decide`). Positives:
entries that need a call (simple_python, multiple, live_simple); negatives: irrelevance and
live_irrelevance; all taken after the first `--skip` entries of each category, which
bench_bfcl.py scores. Prints both distributions' shares at fixed cuts and the cut the adapters'
calibration rule picks (`pick_threshold`).

    python bench/calibrate_threshold.py --model qwen2.5-coder-0.5b-instruct --skip 40 --per-category 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.serving import catalogue, fetch  # noqa: E402
from training.evaluation.items import bfcl_items  # noqa: E402
from training.evaluation.threshold import open_probabilities, pick_threshold  # noqa: E402

POSITIVE = ["simple_python", "multiple", "live_simple"]
NEGATIVE = ["irrelevance", "live_irrelevance"]
CUTS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--skip", type=int, default=40, help="entries per category left to the BFCL bench")
    p.add_argument("--per-category", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    model = catalogue.find(args.model)
    assert model is not None, f"unknown catalogue model {args.model}"
    end = args.skip + args.per_category
    pos_items = [item for c in POSITIVE for item in bfcl_items(c, end)[args.skip :]]
    neg_items = [item for c in NEGATIVE for item in bfcl_items(c, end)[args.skip :]]
    probabilities = open_probabilities(fetch.fetch(model), ["base"], pos_items + neg_items, threads=args.threads)
    pos, neg = probabilities["base"][: len(pos_items)], probabilities["base"][len(pos_items) :]
    print(f"{args.model}: {len(pos)} prompts needing a call, {len(neg)} needing none")
    print("| threshold | calls kept (needing a call) | vetoed (needing none) |\n|---:|---:|---:|")
    for cut in CUTS:
        kept = sum(p >= cut for p in pos) / len(pos)
        vetoed = sum(p < cut for p in neg) / len(neg)
        print(f"| {cut:.2f} | {kept:.2f} | {vetoed:.2f} |")
    cal = pick_threshold(pos, neg)
    print(
        f"calibration rule (keep >= 0.97 of the calls): {cal.threshold}, kept {cal.kept:.2f}, vetoed {cal.vetoed:.2f}"
    )


if __name__ == "__main__":
    main()
