"""SFT's view of the support split: parallel records drawn `parallel_weight` times, the rest once."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.data.catalogue import SUPPORT
from training.data.records import write_records
from training.data.synth import generate
from training.demo.build import DemoConfig, _weighted_parallel
from training.recipes.sft import SFTConfig, load_train_records


def _kinds(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["meta"]["kind"] for r in records)


def test_parallel_records_are_drawn_parallel_weight_times(tmp_path: Path) -> None:
    records = generate([SUPPORT], 120, seed=3)
    train = write_records(tmp_path / "train.jsonl", records)
    once = _kinds([r.model_dump(mode="json") for r in records])
    assert once["parallel"] > 0 and len(once) > 1

    files, weights = _weighted_parallel(replace(DemoConfig(), parallel_weight=3.0), tmp_path, train)
    mixed, bad = load_train_records(SFTConfig(train=files, train_weights=weights))
    assert bad == 0
    drawn = _kinds(mixed)
    assert drawn["parallel"] == 3 * once["parallel"]
    assert {k: n for k, n in drawn.items() if k != "parallel"} == {k: n for k, n in once.items() if k != "parallel"}


def test_weight_one_trains_on_the_split_as_written(tmp_path: Path) -> None:
    train = write_records(tmp_path / "train.jsonl", generate([SUPPORT], 20, seed=3))
    assert _weighted_parallel(replace(DemoConfig(), parallel_weight=1.0), tmp_path, train) == ((str(train),), ())
    assert not (tmp_path / "sft-train-parallel.jsonl").exists()
