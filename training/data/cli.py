"""`python -m training data ...`: build synthetic datasets, convert public ones, split, pair.

    data synth   --catalogue training/catalogues/general --out data/general --n 6000
    data convert --from xlam|glaive|hermes|openai|bfcl SOURCE --out records.jsonl
    data split   records.jsonl --out data/split --held-out-tool get_weather
    data pairs   train.jsonl --out pairs.jsonl

Every output is written atomically; skipped rows are counted by reason in a report next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.adapters.manifest import atomic_write_text
from training.data.build import build_dataset, dataset_report
from training.data.loaders import convert, load_bfcl
from training.data.pairs import near_miss_pairs
from training.data.records import read_records, write_records
from training.data.split import dedupe, split_records
from training.data.synth import SynthConfig

if TYPE_CHECKING:
    from training.data.records import BadRecords
    from training.data.synth import SynthConfig

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]
FORMATS = ("xlam", "glaive", "hermes", "openai", "bfcl")


def add_command(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "data",
        help="training data: synthesize, convert, split, pair",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    _add_synth(steps)
    _add_convert(steps)
    _add_split(steps)
    _add_pairs(steps)


def _add_synth(steps: SubParsers) -> None:
    p = steps.add_parser("synth", help="generate train/val/test/pairs from tool catalogues")
    p.add_argument("--catalogue", type=Path, action="append", required=True, help="catalogue file or folder (repeat)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n", type=int, default=6000, help="records in all splits together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test shares")
    p.add_argument("--held-out-tool", action="append", default=[], help="a tool seen only in test (repeat)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="SynthConfig override, e.g. --set parallel=0.2 --set max_distractors=2",
    )
    p.set_defaults(handler=_guarded(_run_synth))


def _add_convert(steps: SubParsers) -> None:
    p = steps.add_parser("convert", help="convert a public data set to canonical records")
    p.add_argument("source", help="JSONL / JSON / parquet file, a hub data set name, or a BFCL category")
    p.add_argument("--from", dest="fmt", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, help="records JSONL (a .report.json is written beside it)")
    p.add_argument("--split", default="train", help="hub data sets: the split to read")
    p.add_argument("--limit", type=int, default=None, help="stop after this many good records")
    p.add_argument("--answers", type=Path, default=None, help="bfcl from files: the possible-answer JSONL")
    p.set_defaults(handler=_guarded(_run_convert))


def _add_split(steps: SubParsers) -> None:
    p = steps.add_parser("split", help="dedupe and split records into train/val/test")
    p.add_argument("records", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test shares")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out-tool", action="append", default=[], help="records with it go to test only")
    p.set_defaults(handler=_guarded(_run_split))


def _add_pairs(steps: SubParsers) -> None:
    p = steps.add_parser("pairs", help="near-miss DPO pairs from records")
    p.add_argument("records", type=Path)
    p.add_argument("--out", type=Path, required=True, help="pairs JSONL")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_guarded(_run_pairs))


def _guarded(handler: Handler) -> Handler:
    """Bad input (a broken catalogue, a missing file) ends with its message and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ValueError, OSError) as exc:  # CatalogueError is a ValueError
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def _run_synth(args: argparse.Namespace) -> int:

    config = apply_overrides(SynthConfig(), args.set)
    paths = build_dataset(
        args.catalogue, args.out, args.n, args.seed, config, _fractions(args.fractions), tuple(args.held_out_tool)
    )
    report = json.loads(paths.report.read_text())
    print(
        json.dumps(
            {
                "out": str(args.out),
                "counts": {k: v["count"] for k, v in report["splits"].items()},
                "pairs": report["pairs"]["count"],
                "seconds": report["seconds"],
            },
            indent=2,
        )
    )
    return 0


def _run_convert(args: argparse.Namespace) -> int:

    start = time.perf_counter()
    if args.fmt == "bfcl":
        local = Path(args.source).is_file()
        category = Path(args.source).stem.removeprefix("BFCL_v4_") if local else args.source
        records, bad = load_bfcl(category, Path(args.source) if local else None, args.answers, progress=True)
    else:
        records, bad = convert(args.source, args.fmt, split=args.split, limit=args.limit, progress=True)
    write_records(args.out, records)
    _report(args.out, {"source": args.source, "format": args.fmt, "records": len(records)}, bad, start)
    return 0


def _run_split(args: argparse.Namespace) -> int:

    start = time.perf_counter()
    records, bad = read_records(args.records)
    unique, dropped = dedupe(records)
    splits = split_records(unique, _fractions(args.fractions), args.seed, args.held_out_tool)
    for name, part in splits.items():
        write_records(args.out / f"{name}.jsonl", part)
    report = dataset_report(dict(splits.items()), [], bad, {"input": dropped})
    _report(args.out / "split", {"input": str(args.records), **report}, bad, start)
    return 0


def _run_pairs(args: argparse.Namespace) -> int:

    start = time.perf_counter()
    records, bad = read_records(args.records)
    pairs = near_miss_pairs(records, args.seed)
    atomic_write_text(args.out, "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs))
    _report(args.out, {"input": str(args.records), "pairs": len(pairs)}, bad, start)
    return 0


def _report(beside: Path, summary: dict[str, Any], bad: BadRecords, start: float) -> None:

    summary = {**summary, "bad_records": bad.summary(), "seconds": round(time.perf_counter() - start, 2)}
    path = beside.with_name(beside.name.removesuffix(".jsonl") + ".report.json")
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    brief = {k: v for k, v in summary.items() if k not in ("bad_records", "splits")}
    print(json.dumps({**brief, "bad": bad.summary()["by_reason"], "report": str(path)}, indent=2))
    if len(bad):
        print(f"skipped {len(bad)} bad rows; reasons in {path}", file=sys.stderr)


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise SystemExit(f"--fractions needs three numbers train,val,test; got {text!r}")
    return parts[0], parts[1], parts[2]


def apply_overrides(config: SynthConfig, pairs: list[str]) -> SynthConfig:
    """`key=value` overrides of SynthConfig's numeric fields, typed like their defaults."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        default = fields.get(key)
        if not sep or not isinstance(default, (int, float)) or isinstance(default, bool):
            numeric = sorted(k for k, v in fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(numeric)}")
        changes[key] = type(default)(value)
    return dataclasses.replace(config, **changes)
