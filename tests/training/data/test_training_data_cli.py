"""`python -m training data ...`: each step end to end on real catalogues and fixtures, its
report, and bad input answered with a message and exit code 2 instead of a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.__main__ import main
from training.data.catalogue import SUPPORT
from training.data.records import read_records

DATA = Path(__file__).resolve().parents[2] / "data" / "training_sources"


def test_synth_writes_splits_pairs_and_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "support"
    code = main(["data", "synth", "--catalogue", str(SUPPORT), "--out", str(out), "--n", "300", "--seed", "4",
                 "--set", "parallel=0", "--set", "max_distractors=1"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["train"] + summary["counts"]["val"] + summary["counts"]["test"] > 280
    train, bad = read_records(out / "train.jsonl")
    assert len(train) == summary["counts"]["train"] and not bad
    assert not any(r.kind == "parallel" for r in train)
    for record in train:
        called = {c.function.name for m in record.messages for c in m.tool_calls or ()}
        assert not called or len(record.tools) - len(called) <= 1  # max_distractors=1
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["parallel"] == 0 and report["config"]["max_distractors"] == 1
    assert len((out / "pairs.jsonl").read_text().splitlines()) == report["pairs"]["count"] > 0


def test_synth_refuses_a_broken_catalogue_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(SUPPORT.read_text().replace("tool: escalate", "tool: escalate_now"))
    code = main(["data", "synth", "--catalogue", str(broken), "--out", str(tmp_path / "x"), "--n", "10"])
    assert code == 2
    assert "unknown tool 'escalate_now'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_overrides_name_the_allowed_keys() -> None:
    with pytest.raises(SystemExit, match="max_distractors"):
        main(["data", "synth", "--catalogue", str(SUPPORT), "--out", "unused", "--set", "colour=blue"])


def test_convert_writes_records_and_a_bad_row_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "xlam.jsonl"
    assert main(["data", "convert", str(DATA / "xlam.json"), "--from", "xlam", "--out", str(out)]) == 0
    records, bad = read_records(out)
    assert len(records) == 3 and not bad
    report = json.loads((tmp_path / "xlam.report.json").read_text())
    assert report["records"] == 3 and report["bad_records"]["count"] == 3
    assert report["bad_records"]["by_reason"]["call of undeclared tool"] == 1
    assert "skipped 3 bad rows" in capsys.readouterr().err


def test_convert_bfcl_from_files(tmp_path: Path) -> None:
    out = tmp_path / "bfcl.jsonl"
    args = ["data", "convert", str(DATA / "bfcl_questions.jsonl"), "--from", "bfcl",
            "--answers", str(DATA / "bfcl_answers.jsonl"), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    records, _ = read_records(out)
    assert [r.kind for r in records] == ["single", "parallel", "no_tool_irrelevant"]


def test_convert_a_missing_file_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["data", "convert", str(tmp_path / "nope.jsonl"), "--from", "openai", "--out", str(tmp_path / "o.jsonl")]
    )
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_split_and_pairs_steps(tmp_path: Path) -> None:
    assert main(["data", "synth", "--catalogue", str(SUPPORT), "--out", str(tmp_path / "s"), "--n", "200"]) == 0
    records = tmp_path / "s" / "train.jsonl"
    with records.open("a") as f:
        f.write("{broken\n")
    out = tmp_path / "split"
    assert main(["data", "split", str(records), "--out", str(out), "--held-out-tool", "escalate"]) == 0
    train, _ = read_records(out / "train.jsonl")
    test, _ = read_records(out / "test.jsonl")
    assert train and not any("escalate" in r.tool_names() for r in train)
    assert any("escalate" in r.tool_names() for r in test)
    report = json.loads((out / "split.report.json").read_text())
    assert report["bad_records"]["count"] == 1
    assert main(["data", "pairs", str(out / "train.jsonl"), "--out", str(tmp_path / "pairs.jsonl")]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all({"messages", "tools", "chosen", "rejected", "meta"} <= set(p) for p in pairs)


def test_the_data_command_imports_no_heavy_libraries() -> None:
    code = (
        "import argparse, sys, training.data.cli as c; c.add_command(argparse.ArgumentParser().add_subparsers());"
        "print(' '.join(sorted(sys.modules)))"
    )
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not {"torch", "transformers", "datasets", "trl"} & mods
