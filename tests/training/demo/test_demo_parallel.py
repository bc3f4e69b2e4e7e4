"""SFT's view of the support split: parallel records drawn `parallel_weight` times, the rest once,
and general-catalogue records replayed once beside them."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.data.catalogue import GENERAL, SUPPORT, catalogue_paths, load_catalogue
from training.data.records import read_records, write_records
from training.data.synth import generate
from training.demo.build import DemoConfig, _replay, _sft_mix, _weighted_parallel
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


def test_general_records_are_replayed_once_beside_the_support_split(tmp_path: Path) -> None:
    config = replace(DemoConfig(), parallel_weight=2.0, replay_records=40, rename_share=0.5)
    replay = _replay(config, tmp_path, lambda _: None)
    general, _ = read_records(replay)
    assert 30 <= len(general) <= 40  # deduped
    support_names = {t.function.name for r in generate([SUPPORT], 40, seed=1) for t in r.tools}
    general_names = {t.function.name for r in general for t in r.tools}
    assert not general_names & support_names
    renamed = [r for r in general if not {t.function.name for t in r.tools} <= _catalogue_names()]
    assert 0 < len(renamed) < len(general)  # a share renamed, not all

    train = write_records(tmp_path / "train.jsonl", generate([SUPPORT], 60, seed=3))
    files, weights = _sft_mix(config, tmp_path, train, replay)
    mixed, _ = load_train_records(SFTConfig(train=files, train_weights=weights))
    replayed = [r for r in mixed if {t["function"]["name"] for t in r["tools"]} & general_names]
    assert len(replayed) == len(general)
    assert _sft_mix(config, tmp_path, train, None) == _weighted_parallel(config, tmp_path, train)


def _catalogue_names() -> set[str]:
    return {name for path in catalogue_paths([GENERAL]) for name in load_catalogue(path).tools}
