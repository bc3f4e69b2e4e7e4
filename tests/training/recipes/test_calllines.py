"""Calls trained as bare JSON lines (training/recipes/calllines.py), for a base whose call tag is a
dead token: the trained text is what the gateway's hermes format reads back as the record's calls,
the history before it is the template's (tags), as the gateway renders a client's earlier calls;
and the dead-tag check (training/bases.py) that turns it on in build-demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from server.toolcalls import get_format
from tests.support.training_records import ERROR_RECOVERY, MULTI_TURN, NO_TOOL, PARALLEL, SINGLE, TOOLS, call
from training.bases import dead_tags
from training.recipes.calllines import as_lines, line_pair, line_records
from training.recipes.render import render_pair, render_record, render_records


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model.hf_dir)


def trained_text(record: dict[str, Any], tokenizer: Any) -> tuple[str, str]:
    """(the untrained text, the trained text) of one rendered record."""
    example = render_record(record, tokenizer.chat_template, tokenizer)
    pairs = list(zip(example.input_ids, example.assistant_masks, strict=True))
    return tokenizer.decode([t for t, b in pairs if not b]), tokenizer.decode([t for t, b in pairs if b])


def expected_calls(message: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]


def test_a_call_turn_is_trained_as_lines_that_the_gateway_reads_back(tokenizer: Any) -> None:
    for record in (SINGLE, PARALLEL):
        (example,) = line_records(record)
        _, trained = trained_text(dict(example), tokenizer)
        assert "<tool_call>" not in trained and trained.endswith("<|im_end|>")
        lines = trained.removesuffix("<|im_end|>").split("\n")
        assert len(lines) == len(record["messages"][-1]["tool_calls"])
        parsed = get_format("hermes").parse(trained.removesuffix("<|im_end|>"))
        assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == expected_calls(record["messages"][-1])
        assert parsed.content in (None, "")


def test_later_turns_see_the_call_in_the_templates_tags(tokenizer: Any) -> None:
    # MULTI_TURN: call, tool result, answer. The call is one example (ending there, as lines);
    # the answer another, whose history holds the call as the gateway renders it: in tags.
    first, second = line_records(MULTI_TURN)
    history, trained = trained_text(dict(first), tokenizer)
    assert trained == '{"name": "order_status", "arguments": {"order_id": 42}}<|im_end|>'
    assert "shipped" not in history
    history, trained = trained_text(dict(second), tokenizer)
    assert trained == "Order 42 has shipped.<|im_end|>"
    assert '<tool_call>\n{"name": "order_status", "arguments": {"order_id": 42}}\n</tool_call>' in history
    assert MULTI_TURN["messages"][2].get("train", True) is not False  # the source record is untouched


def test_untrained_calls_stay_in_tags_and_text_records_stay_whole(tokenizer: Any) -> None:
    (example,) = line_records(ERROR_RECOVERY)  # the wrong first call is history, not trained
    history, trained = trained_text(dict(example), tokenizer)
    assert trained == '{"name": "order_status", "arguments": {"order_id": 9001}}<|im_end|>'
    assert '<tool_call>\n{"name": "order_status", "arguments": {"order_id": "9001"}}' in history
    assert line_records(NO_TOOL) == [NO_TOOL]


def test_text_before_calls_is_kept_and_malformed_calls_are_left_to_rendering(tokenizer: Any) -> None:
    message = {"role": "assistant", "content": "Checking. ", "tool_calls": [call("order_status", {"order_id": 1})]}
    assert as_lines(message)["content"] == 'Checking.\n{"name": "order_status", "arguments": {"order_id": 1}}'
    string_args = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}
    assert as_lines(string_args)["content"] == '{"name": "f", "arguments": {"a": 1}}'
    for bad in ({"function": {"arguments": {}}}, {"function": {"name": "f", "arguments": "not json"}}, "x"):
        broken = {"role": "assistant", "tool_calls": [bad]}
        assert as_lines(broken) is broken
    # Whatever line_records is given, rendering decides (and counts) what cannot be trained.
    junk = [{"messages": "nope"}, {"messages": [None, {"role": "assistant", "tool_calls": [{"x": 1}]}]}]
    records = [r for j in junk for r in line_records(j)]
    examples, stats = render_records(records, tokenizer.chat_template, tokenizer, 4096)
    assert examples == [] and sum(stats.skipped.values()) == len(records) == 2


def test_pairs_get_lines_in_both_answers(tokenizer: Any) -> None:
    pair = {
        "messages": [{"role": "user", "content": "Where is order 5?"}],
        "tools": TOOLS,
        "chosen": {"role": "assistant", "tool_calls": [call("order_status", {"order_id": 5})]},
        "rejected": {"role": "assistant", "tool_calls": [call("get_weather", {"city": "5"})]},
    }
    text = render_pair(dict(line_pair(pair)), tokenizer.chat_template, tokenizer)
    assert text.chosen == '{"name": "order_status", "arguments": {"order_id": 5}}<|im_end|>'
    assert text.rejected.startswith('{"name": "get_weather"')
    assert "<tool_call>" in render_pair(pair, tokenizer.chat_template, tokenizer).chosen


def test_dead_tags_are_told_by_identical_output_rows(tiny_model: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tags = ("<tool_call>", "</tool_call>")
    assert not dead_tags(Path(tiny_model.hf_dir), tags)  # random rows: alive
    folder = tmp_path / "dead"
    shutil.copytree(tiny_model.hf_dir, folder)
    from transformers import AutoTokenizer

    ids = [AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(t) for t in tags]
    (file,) = folder.glob("*.safetensors")
    weights = load_file(str(file))
    head = weights["lm_head.weight"]
    head[ids[1]] = head[ids[0]] * 1.1  # the same direction, as in Qwen2.5-Coder's GGUFs
    save_file(weights, str(file), metadata={"format": "pt"})
    assert dead_tags(folder, tags)
    assert not dead_tags(folder, ("<tool_call>", "<|im_end|>"))
    assert not dead_tags(folder, ("<tool_call>", "not one token"))
