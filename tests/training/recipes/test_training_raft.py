"""RAFT: the selection rules (best fully correct answer per prompt, the hardest 25% kept), the
stop rule, picked answers as training records, and the loop's mechanics on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.toolcalls import get_format
from server.types import ToolCall
from training.data.records import parse_record, read_records
from training.evaluation.generate import Sample
from training.evaluation.items import EvalItem, record_item
from training.evaluation.verifier import ToolCallingVerifier, Verdict
from training.recipes.raft import (
    Pick,
    as_record,
    best_correct,
    best_cycle,
    keep_top,
    pick_per_prompt,
    replay,
    should_stop,
)

HERMES = get_format("hermes")
VERIFIER = ToolCallingVerifier(HERMES)
LIGHT = {
    "type": "function",
    "function": {
        "name": "set_light",
        "parameters": {
            "type": "object",
            "properties": {"on": {"type": "boolean"}},
            "required": ["on"],
            "additionalProperties": False,
        },
    },
}


def raw(i: int, *, call: bool) -> dict[str, Any]:
    answer: dict[str, Any] = (
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "set_light", "arguments": {"on": True}}}]}
        if call else {"role": "assistant", "content": "Sure, anything else?"}
    )  # fmt: skip
    return {"messages": [{"role": "user", "content": f"Lights on, room {i}" if call else f"Hi number {i}"}, answer],
            "tools": [LIGHT], "meta": {"id": f"r{i}", "kind": "single" if call else "no_tool_chitchat",
                                       "source": "test"}}  # fmt: skip


def item(i: int, call: bool = True) -> EvalItem:
    return record_item(parse_record(raw(i, call=call)))


def answer(text: str, tokens: int = 10) -> Sample:
    return Sample(text, HERMES.parse(text), tokens)


def judged(it: EvalItem, samples: list[Sample]) -> list[Verdict]:
    return [VERIFIER.score_parsed(list(it.prompt.tools), it.expected, s.parsed) for s in samples]


RIGHT = HERMES.render(None, [ToolCall("set_light", '{"on": true}')])
WRONG_VALUE = HERMES.render(None, [ToolCall("set_light", '{"on": false}')])


def test_best_correct_takes_the_highest_reward_then_the_shortest() -> None:
    it = item(0)
    samples = [answer("no call"), answer(RIGHT, 30), answer(WRONG_VALUE, 5), answer(RIGHT, 12), answer(RIGHT, 12)]
    assert best_correct(samples, judged(it, samples)) == 3
    wrong_only = [answer(WRONG_VALUE), answer("text")]
    assert best_correct(wrong_only, judged(it, wrong_only)) is None
    refused = [Sample(RIGHT, HERMES.parse(RIGHT), 1, error="HTTP 400")]
    assert best_correct(refused, judged(it, refused)) is None


def test_negatives_are_correct_when_they_abstain() -> None:
    it = item(1, call=False)
    samples = [answer(RIGHT), answer("Hello!", 3)]
    assert best_correct(samples, judged(it, samples)) == 1


def test_top_quarter_keeps_the_hardest_prompts() -> None:
    # Eight prompts, each with four answers; prompt i answers right (i % 4) + 1 times of four.
    items = [item(i) for i in range(8)]
    rows = [[answer(RIGHT if k <= i % 4 else "no") for k in range(4)] for i in range(8)]
    picks = pick_per_prompt(items, rows, [judged(it, row) for it, row in zip(items, rows, strict=True)])
    assert len(picks) == 8 and [p.pass_rate for p in picks[:4]] == [0.25, 0.5, 0.75, 1.0]
    kept = keep_top(picks, 0.25)
    assert [p.item.id for p in kept] == ["r0", "r4"]  # the two with one right answer in four
    assert all(p.verdict.correct and p.mean_reward == 0.25 for p in kept)
    assert len(keep_top(picks[:3], 0.25)) == 1 and keep_top([], 0.25) == []
    assert len(keep_top(picks, 1.0)) == 8


def test_prompts_without_a_correct_answer_are_dropped() -> None:
    items = [item(0), item(1)]
    rows = [[answer("no"), answer(WRONG_VALUE)], [answer(RIGHT), answer("no")]]
    picks = pick_per_prompt(items, rows, [judged(it, row) for it, row in zip(items, rows, strict=True)])
    assert [p.item.id for p in picks] == ["r1"] and picks[0].mean_reward == 0.5


@pytest.mark.parametrize(("history", "patience", "stop"), [
    ([0.5], 1, False),
    ([0.5, 0.6], 1, False),
    ([0.5, 0.6, 0.6], 1, True),
    ([0.5, 0.4], 1, True),
    ([0.5, 0.4, 0.6], 2, False),
    ([0.5, 0.4, 0.45], 2, True),
    ([0.5, 0.4], 2, False),
])  # fmt: skip
def test_stop_when_held_out_stops_improving(history: list[float], patience: int, stop: bool) -> None:
    assert should_stop(history, patience) is stop


def test_min_delta_and_best_cycle() -> None:
    assert should_stop([0.5, 0.505], 1, min_delta=0.01)
    assert not should_stop([0.5, 0.52], 1, min_delta=0.01)
    assert best_cycle([0.5, 0.7, 0.7, 0.6]) == 1 and best_cycle([0.5, 0.4]) == 0


def _pick(it: EvalItem, text: str) -> Pick:
    sample = answer(text)
    return Pick(it, sample, judged(it, [sample])[0], 0.0, 0.0)


def test_a_pick_becomes_a_canonical_training_record() -> None:
    record = as_record(_pick(item(3), RIGHT), cycle=2)
    assert not isinstance(record, str)
    assert record.meta.id == "r3-raft2" and record.meta.source == "raft" and record.kind == "single"
    assert record.answer.tool_calls and record.answer.tool_calls[0].function.arguments == {"on": True}
    assert [m.content for m in record.messages[:-1]] == ["Lights on, room 3"]
    chat = as_record(_pick(item(4, call=False), "  Hello!  "), cycle=1)
    assert not isinstance(chat, str) and chat.answer.content == "Hello!"
    empty = as_record(_pick(item(5, call=False), ""), cycle=1)  # an empty answer is no training record
    assert isinstance(empty, str) and "needs content or tool_calls" in empty


def test_replay_is_seeded_and_bounded() -> None:
    records = [parse_record(raw(i, call=True)) for i in range(10)]
    assert [r.meta.id for r in replay(records, 4, 1)] == [r.meta.id for r in replay(records, 4, 1)]
    assert len(replay(records, 40, 1)) == 10 and replay(records, 0, 1) == []


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_raft_cli_config_and_overrides(tmp_path: Path) -> None:
    from training.recipes.raft import load_config

    yaml_file = tmp_path / "raft.yaml"
    yaml_file.write_text("model: m\ntrain_data: t.jsonl\nheldout_data: h.jsonl\ncycles: 2\n")
    config = load_config(yaml_file, ["samples=4", "learning_rate=2.0e-5", "init_adapter=a"])
    assert (config.cycles, config.samples, config.learning_rate, config.init_adapter) == (2, 4, 2e-5, Path("a"))
    assert config.model == Path("m") and config.keep_fraction == 0.25
    with pytest.raises(ValueError, match="unknown"):
        load_config(yaml_file, ["nope=1"])
    with pytest.raises(ValueError, match="samples"):
        load_config(yaml_file, ["samples=many"])


def test_raft_reads_bad_lines_as_counted_skips(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [raw(0, call=True), {"messages": []}])
    records, bad = read_records(path)
    assert len(records) == 1 and len(bad) == 1


# Tiny SFT steps at a high learning rate, one thread (a busy 2-core machine), no checkpoints.
SFT_SET = ("max_steps=2", "batch_size=4", "lora_r=8", "warmup=0", "save_steps=1000", "logging_steps=1")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize(("cycles", "patience"), [(2, 2), (3, 1)])
def test_raft_loop_writes_each_cycle_and_obeys_the_stop_rule(tiny_model: Any, tmp_path: Path, cycles: int,
                                                             patience: int) -> None:  # fmt: skip
    from training.recipes.raft import RaftConfig, run_raft

    train = _write(tmp_path / "train.jsonl", [raw(i, call=i % 2 == 0) for i in range(8)] + [{"bad": 1}])
    heldout = _write(tmp_path / "heldout.jsonl", [raw(10 + i, call=i % 2 == 0) for i in range(4)])
    replayed = _write(tmp_path / "sft.jsonl", [raw(20 + i, call=True) for i in range(6)])
    config = RaftConfig(model=tiny_model.hf_dir, train_data=train, heldout_data=heldout, replay_data=replayed,
                        cycles=cycles, samples=3, max_tokens=24, keep_fraction=0.5, replay_ratio=1.0,
                        learning_rate=1e-2, lr_decay=0.5, patience=patience, threads=1, sft_set=SFT_SET)  # fmt: skip
    out = tmp_path / "run"
    result = run_raft(config, out)  # the real SFT recipe (TRL + PEFT) trains each cycle

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"] == result.history and len(result.history) == len(result.cycles) + 1
    assert metrics["skipped_lines"] == 1 and metrics["stopped"] == result.stopped
    assert (out / "plots" / "raft.png").read_bytes()[:4] == b"\x89PNG" and (out / "config.yaml").is_file()
    assert "held-out mean_reward" in (out / "log.txt").read_text()
    assert json.loads((out / "cycle_0" / "eval" / "metrics.json").read_text())["overall"]["records"] == 4
    for stats in result.cycles:
        # The learning rate decays; each cycle trains its own file from the previous cycle's adapter.
        sft = yaml.safe_load((out / f"cycle_{stats.cycle}" / "sft" / "config.yaml").read_text())
        assert sft["learning_rate"] == stats.learning_rate == pytest.approx(1e-2 * 0.5 ** (stats.cycle - 1))
        previous = None if stats.cycle == 1 else str(out / f"cycle_{stats.cycle - 1}" / "sft" / "adapter")
        assert sft["init_adapter"] == previous and sft["max_steps"] == 2
        assert sft["train"] == [str(out / f"cycle_{stats.cycle}" / "train.jsonl")]
        folder = out / f"cycle_{stats.cycle}"
        samples = (folder / "samples.jsonl").read_text().splitlines()
        assert len(samples) == 8 * 3 and sum(json.loads(s)["kept"] for s in samples) == stats.kept
        assert stats.kept == -(-stats.prompts_with_correct // 2)  # ceil(0.5 * prompts with a correct answer)
        records, bad = read_records(folder / "train.jsonl")
        assert not bad and len(records) == stats.kept - stats.unusable + stats.replayed
        assert sum(r.meta.source == "raft" for r in records) == stats.kept - stats.unusable
        assert stats.replayed == min(6, round(stats.kept))
        assert (folder / "eval" / "report.md").is_file() and stats.adapter == str(folder / "sft" / "adapter")
        assert (folder / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    # It stopped where the rule says, and the best adapter is the best cycle's.
    ran = len(result.cycles)
    assert ran >= min(cycles, patience)  # the rule cannot stop it earlier
    if ran < cycles:
        assert should_stop(result.history, patience) and not should_stop(result.history[:-1], patience)
    assert result.best_cycle == best_cycle(result.history)
    expected_best = None if result.best_cycle == 0 else out / f"cycle_{result.best_cycle}" / "sft" / "adapter"
    assert result.best_adapter == expected_best
