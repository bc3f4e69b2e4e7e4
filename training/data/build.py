"""One call from catalogues to a dataset folder: train / val / test JSONL, DPO pairs, a report.

Each split is generated from its own share of phrasings and slot values (synth's `part`), then
deduplicated within and across splits (train first, so a duplicate is dropped from val / test);
pairs are made from train only. Every file is written atomically.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from server.adapters.manifest import atomic_write_text
from training.data.pairs import Pair, near_miss_pairs
from training.data.records import BadRecords, Record, write_records
from training.data.split import dedupe
from training.data.synth import SynthConfig, generate

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DatasetPaths:
    train: Path
    val: Path
    test: Path
    pairs: Path
    report: Path


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_dataset(
    catalogues: Sequence[Path],
    out_dir: Path,
    n: int,
    seed: int,
    config: SynthConfig | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    held_out_tools: Sequence[str] = (),
    progress: Progress = stderr_progress,
) -> DatasetPaths:
    """About `n` records in all (split by `fractions`, fewer after dedupe) under `out_dir`;
    `held_out_tools` (added to the config's) appear in test only."""
    start = time.perf_counter()
    config = config or SynthConfig()
    if held_out_tools:
        config = replace(config, held_out_tools=tuple(dict.fromkeys((*config.held_out_tools, *held_out_tools))))
    seen: set[str] = set()
    splits: dict[str, list[Record]] = {}
    dropped: dict[str, int] = {}
    for i, (part, fraction) in enumerate(zip(("train", "val", "test"), fractions, strict=True)):
        count = round(n * fraction)
        progress(f"generating {part}: {count} records")
        made = generate(catalogues, count, seed * 10 + i, replace(config, part=part))
        splits[part], dropped[part] = dedupe(made, seen)
    progress("making near-miss pairs from train")
    pairs = near_miss_pairs(splits["train"], seed)
    train, val, test, pairs_path = (out_dir / f"{s}.jsonl" for s in ("train", "val", "test", "pairs"))
    paths = DatasetPaths(train, val, test, pairs_path, out_dir / "report.json")
    for part, records in splits.items():
        write_records(getattr(paths, part), records)
    atomic_write_text(paths.pairs, "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs))
    report = dataset_report(splits, pairs, BadRecords(), dropped)
    report |= {
        "seed": seed,
        "catalogues": [str(c) for c in catalogues],
        "config": asdict(config),
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(paths.report, json.dumps(report, indent=2) + "\n")
    progress(f"wrote {out_dir}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f", pairs {len(pairs)}")
    return paths


def dataset_report(
    splits: dict[str, list[Record]], pairs: Sequence[Pair], bad: BadRecords, dropped: dict[str, int]
) -> dict[str, Any]:
    """Counts by split, kind and tool called; pairs by kind; bad records; duplicates dropped."""
    return {
        "splits": {name: _counts(records) for name, records in splits.items()},
        "duplicates_dropped": dropped,
        "pairs": {"count": len(pairs), "by_kind": dict(Counter(p.meta["kind"] for p in pairs).most_common())},
        "bad_records": bad.summary(),
    }


def _counts(records: Sequence[Record]) -> dict[str, Any]:
    tools = Counter(
        c.function.name for r in records for m in r.messages if m.train is not False for c in m.tool_calls or ()
    )
    return {
        "count": len(records),
        "by_kind": dict(Counter(r.kind for r in records).most_common()),
        "by_tool": dict(tools.most_common()),
    }
