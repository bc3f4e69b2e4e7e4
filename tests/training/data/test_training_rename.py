"""Tool renaming (training/data/rename.py): renamed records stay valid canonical records whose
calls use the new names consistently, and only the names change."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from training.data.catalogue import GENERAL
from training.data.records import dumps, parse_record, read_records
from training.data.rename import rename_file, rename_record
from training.data.synth import generate
from training.demo.tokenizer import word

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # within OpenAI's ^[a-zA-Z0-9_-]{1,64}$


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return [json.loads(dumps(r)) for r in generate([GENERAL], 300, seed=11)]


def _calls(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [c["function"] for m in record["messages"] for c in m.get("tool_calls") or ()]


def test_renamed_records_validate_and_change_only_names(records: list[dict[str, Any]]) -> None:
    rng = random.Random(0)
    for record in records:
        if not record["tools"]:
            continue
        renamed = rename_record(record, rng, word)
        parse_record(renamed)  # every call names a declared tool, with arguments valid for it
        old = {t["function"]["name"]: t["function"] for t in record["tools"]}
        new = [t["function"] for t in renamed["tools"]]
        assert len({f["name"] for f in new}) == len(new) and all(NAME.match(f["name"]) for f in new)
        assert not {f["name"] for f in new} & set(old)
        for before, after in zip(old.values(), new, strict=True):
            assert after["description"] == before["description"]
            props_before = list(before["parameters"].get("properties", {}).values())
            assert list(after["parameters"].get("properties", {}).values()) == props_before
        for before, after in zip(_calls(record), _calls(renamed), strict=True):
            assert list(after["arguments"].values()) == list(before["arguments"].values())
            assert after["name"] != before["name"]
        assert [m.get("content") for m in renamed["messages"] if m["role"] in ("user", "system")] == [
            m.get("content") for m in record["messages"] if m["role"] in ("user", "system")
        ]


def test_a_tool_error_quotes_the_new_parameter_name(records: list[dict[str, Any]]) -> None:
    quoting = [r for r in records if any(m["role"] == "tool" and "missing required argument" in (m["content"] or "")
                                        for m in r["messages"])]  # fmt: skip
    assert quoting, "the generator made no missing-argument trace to test with"
    for record in quoting:
        renamed = rename_record(record, random.Random(1), word)
        keys = {k for t in renamed["tools"] for k in t["function"]["parameters"].get("properties", {})}
        errors = [m["content"] for m in renamed["messages"] if m["role"] == "tool" and "missing" in m["content"]]
        quoted = {q for e in errors for q in re.findall(r"'([^']+)'", e)}
        assert quoted and quoted <= keys


def test_rename_file_renames_a_seeded_share(records: list[dict[str, Any]], tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    n = rename_file(source, tmp_path / "a.jsonl", 0.5, seed=3, word=word)
    with_tools = sum(1 for r in records if r["tools"])
    assert 0.35 * with_tools < n < 0.65 * with_tools
    kept, bad = read_records(tmp_path / "a.jsonl")
    assert len(kept) == len(records) and not bad.items
    rename_file(source, tmp_path / "b.jsonl", 0.5, seed=3, word=word)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    unchanged = sum(json.loads(line) == r for line, r in zip(lines, records, strict=True))
    assert unchanged == len(records) - n
    assert rename_file(source, tmp_path / "c.jsonl", 0.0, seed=3, word=word) == 0
