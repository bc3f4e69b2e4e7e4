"""Assistant-only loss masks on real records and the tiny model's real tokenizer: exactly the
assistant turns and their end-of-turn token, nothing from system, user or tool turns; turns
marked "train": false masked out; records too long or malformed dropped and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.toolcalls import get_format
from tests.support.families import template_text
from tests.support.training_records import ERROR_RECOVERY, MULTI_TURN, NO_TOOL, PARALLEL, RECORDS, SINGLE, TOOLS
from training.recipes.render import RecordError, record_messages, render_record, render_records


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model.hf_dir)


def masked_segments(ids: list[int], mask: list[int], tokenizer: Any) -> list[str]:
    """The decoded runs of consecutive masked-in tokens."""
    runs: list[list[int]] = []
    for k, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit and (k == 0 or not mask[k - 1]):
            runs.append([])
        if bit:
            runs[-1].append(token)
    return [tokenizer.decode(run) for run in runs]


def segments(rec: dict[str, Any], tokenizer: Any, template: str | None = None) -> list[str]:
    example = render_record(rec, template or tokenizer.chat_template, tokenizer)
    return masked_segments(example.input_ids, example.assistant_masks, tokenizer)


def test_single_call_mask_is_exactly_the_call_and_end_of_turn(tokenizer: Any) -> None:
    expected = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call><|im_end|>'
    )
    assert segments(SINGLE, tokenizer) == [expected]


def test_masked_text_parses_back_to_the_records_calls(tokenizer: Any) -> None:
    # What is trained is what the gateway parses: the hermes parser reads the masked text back.
    for rec in (SINGLE, PARALLEL):
        (text,) = segments(rec, tokenizer)
        assert text.endswith("<|im_end|>")
        parsed = get_format("hermes").parse(text.removesuffix("<|im_end|>"))
        expected = [(c["function"]["name"], c["function"]["arguments"]) for c in rec["messages"][-1]["tool_calls"]]
        assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == expected


def test_multi_turn_masks_every_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    example = render_record(MULTI_TURN, tokenizer.chat_template, tokenizer)
    got = masked_segments(example.input_ids, example.assistant_masks, tokenizer)
    assert got == [
        '<tool_call>\n{"name": "order_status", "arguments": {"order_id": 42}}\n</tool_call><|im_end|>',
        "Order 42 has shipped.<|im_end|>",
    ]
    unmasked = tokenizer.decode([t for t, b in zip(example.input_ids, example.assistant_masks, strict=True) if not b])
    for prompt_text in ("You are brief.", "Where is order 42?", '{"status": "shipped"}', "# Tools"):
        assert prompt_text in unmasked
    # The end-of-turn token of user / tool / system turns is never trained, only the assistant's.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ends = [b for t, b in zip(example.input_ids, example.assistant_masks, strict=True) if t == im_end]
    assert ends == [0, 0, 1, 0, 1]  # system, user, assistant, tool (as user), assistant


def test_error_recovery_trains_only_the_corrected_call(tokenizer: Any) -> None:
    got = segments(ERROR_RECOVERY, tokenizer)
    assert got == ['<tool_call>\n{"name": "order_status", "arguments": {"order_id": 9001}}\n</tool_call><|im_end|>']
    assert '"9001"' not in got[0]


def test_plain_text_reply(tokenizer: Any) -> None:
    assert segments(NO_TOOL, tokenizer) == ["Hello! How can I help?<|im_end|>"]


@pytest.mark.parametrize("family", ["llama3_json", "mistral", "qwen3_coder", "granite"])
def test_templates_without_generation_markers(tokenizer: Any, family: str) -> None:
    # None of these templates has {% generation %}: spans come from rendering prefixes, so the
    # mask is the assistant continuation under each family's own layout and end-of-turn.
    template = template_text(family)
    assert "{% generation %}" not in template
    from server.templates import render
    from training.recipes.render import assistant_text

    messages, tools, _ = record_messages(SINGLE)
    _prompt, reply = assistant_text(template, messages[:-1], tools, messages[-1], tokenizer)
    (got,) = segments(SINGLE, tokenizer, template)
    # The tiny tokenizer lacks these families' special tokens, so a token may straddle the end of
    # the reply (Granite's "|>" + "\n" is one BPE token): it is trained, as the model emits it.
    assert got.rstrip() == reply
    assert reply and "Paris" in reply and "Weather in Paris" not in reply
    # Templates that close a turn with eos_token (Mistral) get it trained too.
    full = render(template, messages, tools, add_generation_prompt=False, eos_token=tokenizer.eos_token)
    assert full.rstrip().endswith(reply)


def test_too_long_records_are_dropped_and_counted(tokenizer: Any) -> None:
    lengths = {id(r): len(render_record(r, tokenizer.chat_template, tokenizer).input_ids) for r in RECORDS}
    limit = sorted(lengths.values())[2]
    examples, stats = render_records(RECORDS, tokenizer.chat_template, tokenizer, max_len=limit)
    fits = sum(1 for n in lengths.values() if n <= limit)
    assert len(examples) == stats.kept == fits
    assert stats.skipped["too_long"] == len(RECORDS) - fits > 0
    assert all(len(e.input_ids) <= limit for e in examples)
    assert stats.loss_tokens == sum(e.n_loss for e in examples)


BAD = [
    ({"tools": TOOLS}, "no_messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "bad_message"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no_trained_turn"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "train": False}]},
        "no_trained_turn",
    ),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": {}}]}]},
        "bad_tool_call",
    ),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "bad_message"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"x": 1}]},
        "bad_tool",
    ),
    # A tool turn without content: the template cannot concatenate it.
    (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "tool", "content": None},
                {"role": "assistant", "content": "a"},
            ]
        },
        "template_refused",
    ),
]


@pytest.mark.parametrize(("rec", "reason"), BAD)
def test_bad_records_raise_a_labelled_error(tokenizer: Any, rec: dict[str, Any], reason: str) -> None:
    with pytest.raises(RecordError) as err:
        render_record(rec, tokenizer.chat_template, tokenizer)
    assert err.value.reason == reason


def test_bad_records_are_skipped_and_counted(tokenizer: Any) -> None:
    examples, stats = render_records([r for r, _ in BAD] + [SINGLE], tokenizer.chat_template, tokenizer, 4096)
    assert len(examples) == 1 and stats.records == len(BAD) + 1
    assert sum(stats.skipped.values()) == len(BAD)
    assert stats.skipped["no_trained_turn"] == 2


def test_prompt_that_the_template_renders_differently_is_refused(tokenizer: Any) -> None:
    # A template that drops past assistant turns' content (as reasoning templates do) would train
    # the model on a context it never sees: refused, not trained wrong.
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}...{% else %}{{ m.content }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    rec = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    with pytest.raises(RecordError) as err:
        render_record(rec, template, tokenizer)
    assert err.value.reason == "prefix_mismatch"


def test_jsonl_lines_that_are_not_records_are_counted(tmp_path: Path) -> None:
    from training.recipes.common import read_json_lines

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(SINGLE) + "\nnot json\n[1, 2]\n\n" + json.dumps(NO_TOOL) + "\n", encoding="utf-8")
    records, bad = read_json_lines(path)
    assert records == [SINGLE, NO_TOOL] and bad == 2
