"""Can the served model itself tell a fitting call from a false one? A relevance probe, measured.

For every call the gateway returned in bench_bfcl.py's callgate arm (its saved answers), the same
model is asked one yes/no question in its own chat template: does the called tool do what the user
asked? P(yes) is read off the first answer token (yes/no in either case, with or without a leading
space). If the calls returned on irrelevance (false calls) scored below the calls returned where a
call is needed, a threshold on P(yes) would veto false calls after one extra prefill. The table
shows the two distributions and, for the cut that vetoes half, 90% or all of the false calls, the
share of needed calls kept.

    python bench/bench_relevance_probe.py --model qwen2.5-coder-0.5b-instruct --write
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_bfcl import OUT, _answers, entries  # noqa: E402
from bench.common import pct, write_section  # noqa: E402
from server.serving import catalogue, fetch  # noqa: E402

NEEDED = ["simple_python", "multiple", "live_simple"]
QUESTIONS = {
    "plain": "Request: {user}\nFunction: {name} - {description}\n"
    "Can this function fulfil the request? Answer yes or no.",
    "with-call": (
        'A user asked: "{user}"\n\nAvailable tool `{name}`: {description}\n\nProposed call: {name}({arguments})\n\n'
        "Does this tool actually do what the user asked for, so that calling it answers the request? "
        "Answer yes or no."
    ),
}
VETO = [0.5, 0.9, 1.0]


def p_yes(llm: Any, question: str) -> float:
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": question}], max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20
    )
    top = out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    mass = {"yes": 0.0, "no": 0.0}
    for item in top:
        word = item["token"].strip().lower()
        if word in mass:
            mass[word] += math.exp(item["logprob"])
    return mass["yes"] / (mass["yes"] + mass["no"]) if any(mass.values()) else 0.5


def probe(llm: Any, model: str, category: str, template: str) -> list[float]:
    answers = _answers(OUT / model / "callgate" / f"{category}.jsonl")
    scores = []
    for entry_id, tools, messages in entries(category, len(answers)):  # the answers are a prefix
        answer = answers.get(entry_id)
        if not answer or not answer["calls"]:
            continue
        name, arguments = answer["calls"][0]
        tool = next((t for t in tools if t.name == name), tools[0])
        user = " ".join(m.content for m in messages if m.role == "user")
        question = template.format(user=user, name=name, description=tool.description, arguments=arguments)
        scores.append(p_yes(llm, question))
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = p.parse_args()
    from llama_cpp import Llama

    model = catalogue.find(args.model)
    assert model is not None, f"unknown catalogue model {args.model}"
    llm = Llama(model_path=str(fetch.fetch(model)), n_ctx=4096, n_threads=args.threads, logits_all=True, verbose=False)
    rows = [
        "| question | needed calls | false calls | P(yes) needed p10 / p50 / p90 | P(yes) false p10 / p50 / p90 | "
        + " | ".join(f"needed kept, {v:.0%} of false vetoed" for v in VETO)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(VETO),
    ]
    for label, template in QUESTIONS.items():
        needed = [s for c in NEEDED for s in probe(llm, args.model, c, template)]
        false = sorted(probe(llm, args.model, "irrelevance", template))
        spread = [" / ".join(f"{pct(scores, q):.2f}" for q in (10, 50, 90)) for scores in (needed, false)]
        # the lowest cut that vetoes the share: just above that many false calls' scores
        cuts = [false[min(len(false) - 1, math.ceil(v * len(false)) - 1)] + 1e-9 for v in VETO]
        kept = " | ".join(f"{sum(s >= c for s in needed) / len(needed):.2f}" for c in cuts)
        rows.append(f"| {label} | {len(needed)} | {len(false)} | {spread[0]} | {spread[1]} | {kept} |")
        print(json.dumps({"question": label, "needed": needed, "false": false}))
    body = (
        f"`{args.model}`, the calls callgate returned in bench_bfcl.py's saved answers (first 40 entries of "
        f"{', '.join(NEEDED)} and irrelevance). For a share of the false calls to veto, the lowest cut on "
        "P(yes) that vetoes it and the share of needed calls that cut keeps, read on the scored entries "
        "themselves (the probe's best case).\n\n" + "\n".join(rows)
    )
    print(body)
    if args.write:
        write_section("Relevance probe: the model judging its own calls", body, ("llama_cpp_python",))


if __name__ == "__main__":
    main()
