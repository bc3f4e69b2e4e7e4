"""Source data sets -> canonical records, with every skipped row counted and reported.

`convert(source, fmt)` reads rows (local JSONL / JSON / parquet, or a hub name through
`datasets`), converts each with the format's converter (training/data/sources/) and validates
it as a record. `load_bfcl(category)` reads BFCL from the bfcl-eval wheel, or from local
question and possible-answer files in BFCL's own layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.data.records import BadRecords, Record, parse_record, validation_reason
from training.data.sources import glaive, hermes, openai_chat, xlam
from training.data.sources.bfcl import convert_entry
from training.data.sources.rows import Row, read_rows
from training.evaluation import bfcl

Converter = Callable[[dict[str, Any], str], dict[str, Any]]
FORMATS: dict[str, Converter] = {
    "xlam": xlam.convert_row,
    "glaive": glaive.convert_row,
    "hermes": hermes.convert_row,
    "openai": openai_chat.convert_row,
}


def convert(
    source: str | Path, fmt: str, *, split: str = "train", limit: int | None = None, progress: bool = False
) -> tuple[list[Record], BadRecords]:
    """Every convertible row of `source` as a record; the rest in the report with the reason."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}, bfcl")
    return collect(_converted(read_rows(source, split), FORMATS[fmt]), limit, progress, f"convert {fmt}")


def _converted(rows: Iterable[tuple[str, Row | str]], converter: Converter) -> Iterator[tuple[str, Record | str]]:
    for where, row in rows:
        yield where, row if isinstance(row, str) else _one(converter, row, where)


def _one(make: Callable[..., dict[str, Any]], *args: Any) -> Record | str:
    """A record or the reason it is not one. Any failure of one row is that row's problem:
    it is reported and the file goes on (sources hold every malformation imaginable)."""
    try:
        return parse_record(make(*args))
    except ValidationError as exc:
        return validation_reason(exc)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def collect(
    items: Iterable[tuple[str, Record | str]], limit: int | None = None, progress: bool = False, label: str = ""
) -> tuple[list[Record], BadRecords]:
    from tqdm import tqdm

    records: list[Record] = []
    bad = BadRecords()
    for where, item in tqdm(items, desc=label, unit=" rows", disable=not progress):
        if isinstance(item, Record):
            records.append(item)
        else:
            bad.add(where, item)
        if limit is not None and len(records) >= limit:
            break
    return records, bad


def load_bfcl(
    category: str, questions: Path | None = None, answers: Path | None = None, progress: bool = False
) -> tuple[list[Record], BadRecords]:
    """A BFCL category as evaluation records: from the wheel, or from local files in BFCL's
    layout (`questions`: one entry per line; `answers`: {"id", "ground_truth"} per line)."""
    if questions is None:
        entries: list[tuple[str, Row | str]] = [(f"index {i}", e) for i, e in enumerate(bfcl.load_category(category))]
        truth = bfcl.load_possible_answers(category)
    else:
        entries = list(read_rows(questions))
        truth = _answers(answers)
    items = ((w, e if isinstance(e, str) else _one(convert_entry, e, truth, category)) for w, e in entries)
    return collect(items, None, progress, f"bfcl {category}")


def _answers(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[str(row["id"])] = row["ground_truth"]
    return out
