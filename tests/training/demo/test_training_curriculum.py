"""The copy curriculum (training/demo/curriculum.py): drills are first calls whose ids the request
holds; the share of prompts that show their tool list ramps from none to all; the loss falls on
the call only; a run writes a loadable whole model, its log, metrics and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.data.catalogue import GENERAL
from training.data.records import to_json
from training.data.synth import generate
from training.demo.curriculum import CurriculumConfig, batch_tensors, drills, render, shown_share, train_copy

SERVICES = GENERAL / "services.yaml"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("services") / "train.jsonl"
    records = generate([SERVICES], 80, seed=5)
    path.write_text("".join(json.dumps(to_json(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_the_share_of_prompts_with_tool_lists_ramps_from_none_to_all() -> None:
    shares = [shown_share(step, 300, (1 / 3, 1.0)) for step in range(1, 301)]
    assert shares[:100] == [0.0] * 100
    assert shares[-1] == 1.0
    assert all(a <= b for a, b in zip(shares, shares[1:], strict=False))
    assert 0.4 < shown_share(200, 300, (1 / 3, 1.0)) < 0.6
    assert shown_share(5, 10, (0.5, 0.5)) == 1.0 and shown_share(4, 10, (0.5, 0.5)) == 0.0


def test_drills_are_first_trained_calls_whose_ids_the_request_holds(services: Path) -> None:
    found = drills(services)
    assert len(found) >= 20
    # an error-recovery trace's wrong first call (a mistyped id, kept out of the loss) is history
    assert any(any(m.tool_calls for m in drill.history) for drill in found)
    for drill in found:
        assert drill.call.role == "assistant" and drill.call.tool_calls
        asked = " ".join(m.content or "" for m in drill.history if m.role == "user")
        for value in drill.values:
            assert any(c.isdigit() for c in value) and value in asked


def test_the_loss_falls_on_the_call_only_and_tool_lists_can_be_hidden(tiny_model: Any, services: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    template = tokenizer.chat_template
    drill = drills(services)[0]
    hidden, shown = render(drill, template, tokenizer, False), render(drill, template, tokenizer, True)
    assert hidden[1] == shown[1] and drill.values[0] in shown[1]
    assert drill.tools[0].name in shown[0] and drill.tools[0].name not in hidden[0]
    ids, attention, labels = batch_tensors([hidden, shown], tokenizer)
    for row, (prompt, call) in enumerate([hidden, shown]):
        trained = labels[row][labels[row] != -100].tolist()
        assert tokenizer.decode(trained) == call
        n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        assert (labels[row, :n_prompt] == -100).all()
        assert int(attention[row].sum()) == n_prompt + len(trained)
    assert ids.shape[0] == 2 and (labels[0, int(attention[0].sum()) :] == -100).all()


def test_a_run_writes_a_loadable_model_its_log_and_metrics(tiny_model: Any, services: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    template = AutoTokenizer.from_pretrained(tiny_model.hf_dir).chat_template
    out = tmp_path / "model"
    config = CurriculumConfig(steps=4, batch_size=2, warmup=1, probe=2, learning_rate=1e-3)
    metrics = train_copy(tiny_model.hf_dir, services, services, tmp_path / "run", out, config,
                         say=lambda _: None)  # fmt: skip
    assert metrics["steps"] == 4 and 0.0 <= metrics["copy_rate_with_tools"] <= 1.0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final_loss"] == metrics["final_loss"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [4] and log[0]["tools_shown"] == 1.0
    assert (tmp_path / "run" / "plots" / "copy.png").is_file()
    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir)
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)
    assert AutoTokenizer.from_pretrained(out).chat_template == template
    assert not list(tmp_path.glob(".model.tmp-*"))


def test_a_file_without_ids_to_copy_is_a_clear_error(tiny_model: Any, tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}], "tools": []}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no call with a value to copy"):
        train_copy(tiny_model.hf_dir, path, None, tmp_path / "run", tmp_path / "out", CurriculumConfig())
