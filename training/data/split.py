"""Deduplication and train / validation / test splits of canonical records.

Duplicates are found by normalised content (whitespace and case folded, call ids dropped, tool
order ignored). Splits keep whole groups together (by default a record's phrasing templates,
else its id) so no wording leaks from train into test, and records that use a held-out tool go
to test only. Synthetic data is split at generation instead (synth's `part`): this module is
for data that arrives whole (converted sources) and for the final cross-split dedupe.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from training.data.records import Record

Group = Callable[[Record], str]


def normalised(record: Record) -> str:
    """The record's content as one canonical string: what makes two records the same example."""
    turns = []
    for m in record.messages:
        calls = sorted(json.dumps([c.function.name, c.function.arguments], sort_keys=True) for c in m.tool_calls or ())
        turns.append([m.role, _fold(m.content or ""), calls, m.train is not False])
    return json.dumps([turns, sorted(record.tool_names())], ensure_ascii=False)


def _fold(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def dedupe_key(record: Record) -> str:
    return hashlib.sha256(normalised(record).encode()).hexdigest()


def dedupe(records: Iterable[Record], seen: set[str] | None = None) -> tuple[list[Record], int]:
    """Records whose content was not seen before (in order), and how many were dropped.
    `seen` is updated, so calling it split after split removes cross-split duplicates."""
    seen = set() if seen is None else seen
    kept: list[Record] = []
    dropped = 0
    for record in records:
        key = dedupe_key(record)
        if key in seen:
            dropped += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, dropped


@dataclass(frozen=True)
class Splits:
    train: list[Record]
    val: list[Record]
    test: list[Record]

    def items(self) -> list[tuple[str, list[Record]]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]


def template_group(record: Record) -> str:
    """The phrasing templates a record was made from (synthetic data), else its own id."""
    templates = getattr(record.meta, "templates", None)
    return "|".join(sorted(templates)) if templates else record.meta.id


def split_records(
    records: Sequence[Record],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    held_out_tools: Iterable[str] = (),
    group: Group = template_group,
) -> Splits:
    """Deduplicated records split by a stable hash of their group; held-out tools go to test."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    held = frozenset(held_out_tools)
    unique, _ = dedupe(records)
    parts: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for record in unique:
        part = "test" if held & _tools_used(record) else _part(f"{seed}:{group(record)}", fractions)
        parts[part].append(record)
    return Splits(parts["train"], parts["val"], parts["test"])


def _tools_used(record: Record) -> set[str]:
    return set(record.tool_names())


def _part(key: str, fractions: tuple[float, float, float]) -> str:
    x = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(1 << 48)
    if x < fractions[0]:
        return "train"
    return "val" if x < fractions[0] + fractions[1] else "test"
