"""Rows of a data set, wherever it is: a local JSONL, JSON (array) or parquet file, or a hub
data set name loaded with `datasets` (no network needed for local files). Rows that cannot be
read (a broken JSON line) come out as a reason, never as an exception."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def read_rows(source: str | Path, split: str = "train", config: str | None = None) -> Iterator[tuple[str, Row | str]]:
    """(where, row or reason) for every row; `split` / `config` only for hub data sets."""
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet(path)
        elif suffix == ".json" and _starts_array(path):
            yield from _json_array(path)
        else:
            yield from _jsonl(path)
        return
    if path.suffix.lower() in (".json", ".jsonl", ".parquet") and not path.exists():
        raise FileNotFoundError(f"{source}: no such file")
    yield from _hub(str(source), split, config)  # a hub name, or a local folder `datasets` can read


def _starts_array(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        head = f.read(64).lstrip()
    return head.startswith("[")


def _jsonl(path: Path) -> Iterator[tuple[str, Row | str]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield f"line {number}", _row(line)


def _row(text: str) -> Row | str:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg}"
    return row if isinstance(row, dict) else f"a row must be a JSON object, got {type(row).__name__}"


def _json_array(path: Path) -> Iterator[tuple[str, Row | str]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        yield "file", f"invalid JSON: {exc.msg} at line {exc.lineno}"
        return
    for i, row in enumerate(rows):
        yield f"index {i}", row if isinstance(row, dict) else f"a row must be a JSON object, got {type(row).__name__}"


def _parquet(path: Path) -> Iterator[tuple[str, Row | str]]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    index = 0
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"row {index}", row
            index += 1


def _hub(name: str, split: str, config: str | None) -> Iterator[tuple[str, Row | str]]:
    from datasets import load_dataset

    data = load_dataset(name, config, split=split)
    for i, row in enumerate(data):
        yield f"row {i}", dict(row)
