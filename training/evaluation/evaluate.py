"""`python -m training eval`: a model (in-process, + adapter) or an OpenAI-compatible endpoint
(the gateway, constrained or not) answers evaluation items; the verifier scores each answer;
the run folder gets config.yaml, log.txt, results.jsonl (one line per item), metrics.json
(the four numbers overall and by group, BFCL accuracy by category), report.md and plots/*.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.adapters.manifest import atomic_write_text
from training.data.records import BadRecords
from training.evaluation.generate import EndpointBackend, SampleSettings, TransformersBackend, dump_sample
from training.evaluation.items import BFCL_CATEGORIES, bfcl_categories, bfcl_items, bfcl_pass, read_items
from training.evaluation.report import write_report
from training.evaluation.verifier import aggregate, argument_hits, verdict

if TYPE_CHECKING:
    from training.data.records import BadRecords
    from training.evaluation.generate import Backend, Sample, SampleSettings
    from training.evaluation.items import EvalItem
    from training.evaluation.verifier import Verdict

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

log = logging.getLogger("training.evaluation.evaluate")


@dataclass(frozen=True)
class Scored:
    item: EvalItem
    sample: Sample
    verdict: Verdict
    bfcl_pass: bool | None  # None outside BFCL categories


def score_items(items: Sequence[EvalItem], backend: Backend, settings: SampleSettings) -> list[Scored]:
    """One answer per item (settings.n must be 1), scored by the verifier; BFCL's pass rule too."""

    if settings.n != 1:
        raise ValueError("evaluation scores one answer per item (n=1)")
    samples = backend.sample([i.prompt for i in items], settings)
    scored = []
    for item, (sample,) in zip(items, samples, strict=True):
        judged = verdict(item.prompt.tools, item.expected, sample.parsed)
        passed = bfcl_pass(item, sample.parsed) if item.group in BFCL_CATEGORIES else None
        scored.append(Scored(item, sample, judged, passed))
    return scored


def summarize(scored: Sequence[Scored]) -> dict[str, Any]:
    """The four numbers overall and by group, accuracy per argument, and BFCL accuracy by
    category (with their mean)."""

    groups = sorted({s.item.group for s in scored})
    by_group = {g: aggregate(s.verdict for s in scored if s.item.group == g).to_json() for g in groups}
    out: dict[str, Any] = {
        "overall": aggregate(s.verdict for s in scored).to_json(),
        "by_group": by_group,
        "errors": sum(s.sample.error is not None for s in scored),
    }
    hits: dict[str, list[bool]] = {}
    for s in scored:
        if s.verdict.valid and s.verdict.name_ok:  # argument match's own denominator
            for key, right in argument_hits(s.item.expected, s.verdict.calls):
                hits.setdefault(key, []).append(right)
    out["by_argument"] = {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(hits.items())}
    bfcl = {}
    for group in groups:
        flags = [s.bfcl_pass for s in scored if s.item.group == group and s.bfcl_pass is not None]
        if flags:
            bfcl[group] = {"n": len(flags), "accuracy": sum(flags) / len(flags)}
    if bfcl:
        out["bfcl"] = {"categories": bfcl, "mean": sum(c["accuracy"] for c in bfcl.values()) / len(bfcl)}
    return out


def run_eval(
    items: Sequence[EvalItem], backend: Backend, settings: SampleSettings, out: Path, skipped: BadRecords | None = None
) -> dict[str, Any]:
    """Answer, score and write the run folder `out`; returns the metrics written."""

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    scored = score_items(items, backend, settings)
    metrics = {
        "backend": backend.describe(),
        "sampling": asdict(settings),
        **summarize(scored),
        "skipped": (skipped or BadRecords()).summary(),
        "seconds": time.perf_counter() - start,
        "tokens": sum(s.sample.tokens for s in scored),
    }
    rows = [
        {
            "id": s.item.id,
            "group": s.item.group,
            "verdict": s.verdict.to_json(),
            "bfcl_pass": s.bfcl_pass,
            "answer": dump_sample(s.sample),
        }
        for s in scored
    ]
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(out, metrics)
    log.info("evaluated %d items in %.1f s: %s", len(scored), metrics["seconds"], metrics["overall"])
    return metrics


# ---- command line ------------------------------------------------------------------------------


def add_command(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate a model or an endpoint: the four numbers, BFCL AST accuracy, report",
        description="Answer evaluation items with a model in-process (transformers + PEFT) or an "
        "OpenAI-compatible endpoint, score each answer as the gateway parses it, and write "
        "metrics.json, results.jsonl, report.md and plots to --out.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        "--base-model",
        dest="model",
        type=Path,
        help="base model in-process: transformers folder, GGUF file or catalogue name",
    )
    source.add_argument("--endpoint", help="base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--adapter", type=Path, help="PEFT adapter folder (with --model)")
    parser.add_argument(
        "--tool-format",
        help="tool-call format (with --model; default: adapter manifest, else detected from the chat template)",
    )
    parser.add_argument("--served-model", help="model name at the endpoint (with --endpoint)")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight at once (with --endpoint; default 1)"
    )
    parser.add_argument(
        "--tool-choice",
        choices=("auto", "required", "none"),
        help="sent to the endpoint (default: not sent, the server's default)",
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, action="append", help="JSONL of canonical records (repeatable)")
    data.add_argument(
        "--bfcl",
        nargs="+",
        metavar="CATEGORY",
        help="BFCL categories (simple, multiple, parallel, parallel_multiple, irrelevance, "
        "live_*, or: live, non_live, all)",
    )
    parser.add_argument("--limit", type=int, help="at most this many items per file or category")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (in-process)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/eval-<time>)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        raise SystemExit(f"eval: {problem}")
    from training.recipes.runs import make_run_dir

    args.out = make_run_dir("eval", args.out)
    with log_to(args.out / "log.txt"):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    import yaml

    from training.recipes.runs import CONFIG

    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "handler"}
    config["data"] = [str(p) for p in args.data] if args.data else None
    atomic_write_text(args.out / CONFIG, yaml.safe_dump(config, sort_keys=False))
    items, skipped = _items(args)
    settings = SampleSettings(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    metrics = run_eval(items, _backend(args), settings, args.out, skipped)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "overall": metrics["overall"],
                "bfcl_mean": metrics.get("bfcl", {}).get("mean"),
                "errors": metrics["errors"],
                "skipped": metrics["skipped"]["count"],
            },
            indent=2,
        )
    )
    return 0


def _check_args(args: argparse.Namespace) -> str | None:
    if args.endpoint and not args.served_model:
        return "--endpoint needs --served-model NAME"
    if args.model and (args.served_model or args.tool_choice):
        return "--served-model and --tool-choice go with --endpoint"
    if args.concurrency < 1 or (args.concurrency > 1 and not args.endpoint):
        return "--concurrency is 1 or more, and more than 1 only with --endpoint"
    if args.endpoint and (args.adapter or args.tool_format):
        return "--adapter and --tool-format go with --model (an endpoint serves its own)"
    missing = [str(p) for p in (args.data or []) if not p.is_file()]
    return f"no such file: {', '.join(missing)}" if missing else None


def _items(args: argparse.Namespace) -> tuple[list[EvalItem], BadRecords]:

    items: list[EvalItem] = []
    skipped = BadRecords()
    for path in args.data or []:
        found, bad = read_items(path, args.limit)
        items += found
        for b in bad.items:
            skipped.add(f"{path.name} {b.where}", b.reason)
    for category in bfcl_categories(args.bfcl or []):
        items += bfcl_items(category, args.limit)
    return items, skipped


def _backend(args: argparse.Namespace) -> Backend:

    if args.endpoint:
        return EndpointBackend(
            args.endpoint, args.served_model, args.tool_choice, api_key=args.api_key, concurrency=args.concurrency
        )
    return TransformersBackend(args.model, args.adapter, args.tool_format, threads=args.threads)


@contextmanager
def log_to(path: Path) -> Iterator[None]:
    """The training module's log records (INFO and up) also go to `path` meanwhile."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("training")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
