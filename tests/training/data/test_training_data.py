"""Training data: the canonical record, the synthetic generator over the real catalogues, splits
that hold phrasings and tools out, dedupe and near-miss pairs. Every generated record is checked
by rendering it with the demo models' real chat template and parsing the calls back with the
gateway's own Hermes parser."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server.toolcalls import get_format
from server.toolcalls.base import ParsedCall
from server.toolcalls.validation import validate_call
from training.data.build import build_dataset
from training.data.catalogue import GENERAL, SUPPORT, CatalogueError, load_catalogue
from training.data.pairs import PAIR_KINDS, near_miss_pairs
from training.data.records import (
    KINDS,
    NEGATIVE_KINDS,
    Record,
    dumps,
    parse_record,
    read_records,
    render_record,
    server_tools,
    validation_reason,
    write_records,
)
from training.data.split import dedupe, split_records
from training.data.synth import SynthConfig, generate

HERMES = (Path(__file__).resolve().parents[3] / "training" / "templates" / "hermes.jinja").read_text()
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip


def _record(**changes: Any) -> dict[str, Any]:
    base = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        ],
        "tools": [WEATHER],
        "meta": {"id": "r1", "kind": "single", "source": "test"},
    }  # fmt: skip
    return base | changes


@pytest.fixture(scope="module")
def general() -> list[Record]:
    return generate([GENERAL], 1200, seed=7)


@pytest.fixture(scope="module")
def support() -> list[Record]:
    return generate([SUPPORT], 800, seed=3)


# ---- records ----------------------------------------------------------------------------------------


def test_a_valid_record_round_trips_in_openai_shape() -> None:
    record = parse_record(_record())
    again = json.loads(dumps(record))
    assert again["messages"][1]["content"] is None  # explicit null, as OpenAI writes it
    assert again["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert parse_record(again) == record


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"tools": []}, "call of undeclared tool 'get_weather'"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": 1}"}}]}]},
         "arguments"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": {"city": 3}}}]}]},
         "do not match the schema"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}", "tool_call_id": "x"},
                       {"role": "assistant", "content": "ok"}]}, "answers no earlier call"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "at least 2"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "no user message"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                       {"role": "user", "content": "c"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                       {"role": "assistant", "content": "c"}]}, "system message may only come first"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                                     "required": 3}}}]},
         "invalid JSON Schema"),
        ({"tools": [WEATHER, WEATHER]}, "duplicate tool names"),
        ({"meta": {"id": "x", "kind": "weird", "source": "t"}}, "meta.kind"),
    ],
)  # fmt: skip
def test_invalid_records_are_refused_with_the_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_record(_record(**changes))
    assert reason in validation_reason(info.value)


def test_a_wrong_call_marked_out_of_the_loss_is_allowed() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "train": False, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"error\": \"missing required argument 'city'\"}"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    ]  # fmt: skip
    record = parse_record(_record(messages=messages))
    assert json.loads(dumps(record))["messages"][1]["train"] is False
    with pytest.raises(ValidationError):  # the same call counted in the loss is refused
        parse_record(_record(messages=[m if i != 1 else {**m, "train": True} for i, m in enumerate(messages)]))


def test_read_records_skips_and_reports_bad_lines(tmp_path: Path) -> None:
    good = dumps(parse_record(_record()))
    lines = [good, "{not json", "", json.dumps(_record(tools=[])), json.dumps({"messages": []}), good]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    records, bad = read_records(path)
    assert len(records) == 2
    assert [b.where for b in bad.items] == ["line 2", "line 4", "line 5"]
    summary = bad.summary()
    assert summary["count"] == 3
    assert summary["by_reason"]["invalid JSON"] == 1
    assert summary["by_reason"]["call of undeclared tool"] == 1


def test_write_records_round_trips(tmp_path: Path, support: list[Record]) -> None:
    path = write_records(tmp_path / "out" / "r.jsonl", support[:50])
    records, bad = read_records(path)
    assert records == support[:50] and not bad
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


# ---- the generator -------------------------------------------------------------------------------------


def test_generation_is_deterministic_in_the_seed() -> None:
    a = [dumps(r) for r in generate([SUPPORT], 60, seed=1)]
    assert a == [dumps(r) for r in generate([SUPPORT], 60, seed=1)]
    assert a != [dumps(r) for r in generate([SUPPORT], 60, seed=2)]


def test_every_kind_appears_and_negatives_are_10_to_30_percent(general: list[Record], support: list[Record]) -> None:
    for records in (general, support):
        kinds = Counter(r.kind for r in records)
        assert set(kinds) == set(KINDS)
        negatives = sum(kinds[k] for k in NEGATIVE_KINDS) / len(records)
        assert 0.1 <= negatives <= 0.3, kinds


def test_kind_weights_are_honoured() -> None:
    only = SynthConfig(single=0, parallel=1, multi_turn=0, error_recovery=0, no_tool_irrelevant=0,
                       no_tool_chitchat=0, clarify=0)  # fmt: skip
    records = generate([GENERAL], 40, seed=0, config=only)
    assert {r.kind for r in records} == {"parallel"}
    assert all(2 <= len(r.answer.tool_calls or ()) <= 3 for r in records)


def test_records_render_with_the_hermes_template_and_parse_back(general: list[Record], support: list[Record]) -> None:
    hermes = get_format("hermes")
    for record in general[:400] + support[:200]:
        prompt = render_record(record, HERMES, upto=len(record.messages) - 1, add_generation_prompt=True)
        full = render_record(record, HERMES)
        assert full.startswith(prompt) and full.endswith("<|im_end|>\n")
        parsed = hermes.parse(full[len(prompt) : -len("<|im_end|>\n")])
        expected = [(c.function.name, c.function.arguments) for c in record.answer.tool_calls or ()]
        assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == expected
        if not expected:
            assert parsed.content == record.answer.content


def test_every_answer_call_validates_against_its_schema(general: list[Record]) -> None:
    for record in general:
        tools = {t.name: t for t in server_tools(record)}
        for call in record.answer.tool_calls or ():
            assert validate_call(ParsedCall(call.function.name, json.dumps(call.function.arguments)), tools) is None


def test_tool_sets_hold_the_relevant_tools_plus_up_to_three_distractors(general: list[Record]) -> None:
    sizes: Counter[int] = Counter()
    for record in general:
        called = {c.function.name for m in record.messages for c in m.tool_calls or ()}
        assert called <= set(record.tool_names())
        if not called:  # negatives: tools present (1..4) but none fits, or none at all for chit-chat
            assert len(record.tools) <= 4 and (record.tools or record.kind == "no_tool_chitchat")
            continue
        extra = len(record.tools) - len(called)
        assert 0 <= extra <= 3
        sizes[extra] += 1
    assert len(sizes) == 4  # 0, 1, 2 and 3 distractors all occur
    orders = Counter(tuple(r.tool_names()) for r in general if len(r.tools) >= 3)
    assert len(orders) > 50  # shuffled, not one fixed order


def test_multi_turn_follows_openai_shapes_and_answers_with_the_result(general: list[Record]) -> None:
    multi = [r for r in general if r.kind == "multi_turn"]
    assert multi
    uses_result = 0
    for record in multi:
        roles = [m.role for m in record.messages if m.role != "system"]
        assert roles[-3:] == ["assistant", "tool", "assistant"]
        for i, message in enumerate(record.messages):
            if message.role == "tool":
                previous = record.messages[i - 1]
                assert message.tool_call_id in [c.id for c in previous.tool_calls or ()]
        result = json.loads(record.messages[-2].content or "{}")
        answer = record.answer.content or ""
        uses_result += any(str(v) in answer for v in result.values() if not isinstance(v, bool))
    assert uses_result > 0.8 * len(multi)


def test_support_order_ids_are_copied_from_the_request(support: list[Record]) -> None:
    checked = 0
    for record in support:
        if record.kind != "single":
            continue
        user = record.messages[-2].content or ""
        for call in record.answer.tool_calls or ():
            if "order_id" in call.function.arguments:
                order_id = call.function.arguments["order_id"]
                assert re.fullmatch(r"[0-9]{6,8}", order_id) and order_id in user
                checked += 1
    assert checked > 50
    ids = [c.function.arguments["order_id"] for r in support for c in r.answer.tool_calls or ()
           if "order_id" in c.function.arguments]  # fmt: skip
    assert len(set(ids)) > 0.95 * len(ids)  # fresh ids, nothing to memorise


def test_support_reasons_map_many_wordings_onto_the_enum(support: list[Record]) -> None:
    wordings: dict[str, set[str]] = {}
    for record in support:
        if record.kind != "single":
            continue
        for call in record.answer.tool_calls or ():
            if "reason" in call.function.arguments:
                reason = call.function.arguments["reason"]
                if "_" in reason:  # the enum word is never there to copy
                    assert reason not in (record.messages[-2].content or "")
                wordings.setdefault(reason, set()).add(record.messages[-2].content or "")
    assert set(wordings) >= {"damaged", "wrong_item", "late_delivery", "not_as_described", "changed_mind", "complaint",
                             "legal", "billing_dispute", "repeated_failure"}  # fmt: skip


def test_clarify_asks_a_question_and_never_invents_an_id(support: list[Record]) -> None:
    clarify = [r for r in support if r.kind == "clarify"]
    assert len(clarify) > 20
    for record in clarify:
        assert not record.answer.tool_calls and "?" in (record.answer.content or "")
        assert not re.search(r"[0-9]{6}", record.messages[-2].content or "")


def test_error_recovery_masks_the_wrong_call_and_ends_with_the_fix(general: list[Record]) -> None:
    traces = [r for r in general if r.kind == "error_recovery"]
    assert traces
    for record in traces:
        wrong, error, fixed = record.messages[-3:]
        assert wrong.train is False and fixed.train is None
        assert error.role == "tool" and "error" in json.loads(error.content or "{}")
        assert wrong.tool_calls and fixed.tool_calls
        assert wrong.tool_calls[0].function.name == fixed.tool_calls[0].function.name
        assert wrong.tool_calls[0].function.arguments != fixed.tool_calls[0].function.arguments


def test_irrelevant_requests_come_with_tools_that_do_not_fit(general: list[Record]) -> None:
    irrelevant = [r for r in general if r.kind == "no_tool_irrelevant"]
    assert irrelevant
    tools_of = {c.name: set(c.tools) for c in (load_catalogue(p.resolve()) for p in GENERAL.glob("*.yaml"))}
    from_other_domains = 0
    for record in irrelevant:
        assert record.tools and not record.answer.tool_calls
        asked = record.meta.templates[0].split("/")[0]  # the catalogue the request was phrased from
        if asked in tools_of:
            assert not tools_of[asked] & set(record.tool_names())
            from_other_domains += 1
    assert from_other_domains > 0.3 * len(irrelevant)


# ---- catalogues ----------------------------------------------------------------------------------------


def test_the_general_catalogues_cover_eight_domains_of_three_to_five_tools() -> None:
    catalogues = [load_catalogue(p.resolve()) for p in sorted(GENERAL.glob("*.yaml"))]
    assert len(catalogues) >= 8
    assert all(3 <= len(c.tools) <= 5 for c in catalogues)
    names = [t for c in catalogues for t in c.tools]
    assert len(names) == len(set(names))


def test_support_has_25_phrasings_per_intent_and_the_demo_tools() -> None:
    support = load_catalogue(SUPPORT.resolve())
    assert set(support.tools) == {"track_order", "request_refund", "escalate"}
    assert all(len(i.phrasings) >= 25 for i in support.intents)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace('"Where is my order {order_id}?"', '"Where is my order?"'), "leaves out ['order_id']"),
        (lambda s: s.replace("tool: track_order", "tool: track_it"), "unknown tool 'track_it'"),
        (lambda s: s.replace('pattern: "^[0-9]{6,8}$", description: "The order number, 6 to 8 digits."}',
                             "pattern: 5}", 1), "invalid schema"),
        (lambda s: s + "\n  - [", "while parsing"),
        (lambda s: s.replace("not_as_described, changed_mind]", "not_as_described, off]"),
         "enum values [False] of 'reason' do not fit its own schema"),
    ],
)  # fmt: skip
def test_catalogue_mistakes_are_named(tmp_path: Path, edit: Any, message: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(edit(SUPPORT.read_text()))
    with pytest.raises(CatalogueError, match=re.escape(message)):
        load_catalogue(path)


# ---- splits, dedupe, pairs -----------------------------------------------------------------------------


def test_test_phrasings_and_values_are_never_seen_in_train() -> None:
    train = generate([SUPPORT, GENERAL], 1500, seed=0, config=SynthConfig(part="train"))
    test = generate([SUPPORT, GENERAL], 500, seed=1, config=SynthConfig(part="test"))
    templates = {s: {t for r in rs for t in r.meta.templates} for s, rs in (("train", train), ("test", test))}
    assert templates["test"] and not templates["train"] & templates["test"]
    support_test = {t for t in templates["test"] if t.startswith("support/") and "/clarify" not in t}
    for intent in ("track", "refund", "escalate"):
        assert sum(t.startswith(f"support/{intent}/") for t in support_test) >= 3
    cities = [{c.function.arguments["city"] for r in rs for c in r.answer.tool_calls or ()
               if c.function.name == "get_current_weather"} for rs in (train, test)]  # fmt: skip
    assert cities[1] and not cities[0] & cities[1]


def test_build_dataset_holds_tools_out_and_reports_counts(tmp_path: Path) -> None:
    paths = build_dataset(
        [GENERAL], tmp_path, 2400, seed=5, held_out_tools=["get_air_quality"], progress=lambda m: None
    )
    report = json.loads(paths.report.read_text())
    for part in ("train", "val", "test"):
        text = getattr(paths, part).read_text()
        assert ("get_air_quality" in text) == (part == "test")
        assert report["splits"][part]["count"] == len(text.splitlines())
    assert report["splits"]["test"]["by_tool"]["get_air_quality"] > 0
    assert report["pairs"]["count"] == len(paths.pairs.read_text().splitlines()) > 0
    assert report["bad_records"]["count"] == 0


def test_dedupe_folds_case_whitespace_and_call_ids() -> None:
    a = parse_record(_record())
    b = parse_record(json.loads(dumps(a).replace("Weather in Paris?", "weather  in paris?").replace('"c1"', '"c9"')))
    c = parse_record(json.loads(dumps(a).replace('"city": "Paris"', '"city": "Rome"')))
    kept, dropped = dedupe([a, b, c])
    assert kept == [a, c] and dropped == 1


def test_split_records_keeps_groups_together_and_held_out_tools_in_test(general: list[Record]) -> None:
    splits = split_records(general, (0.7, 0.15, 0.15), seed=0, held_out_tools=["get_stock_price"])
    groups = {
        name: {"|".join(sorted(r.meta.templates)) for r in records if "get_stock_price" not in r.tool_names()}
        for name, records in splits.items()
    }
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    assert all("get_stock_price" not in r.tool_names() for r in splits.train + splits.val)
    assert 0.5 < len(splits.train) / len(general) < 0.85
    with pytest.raises(ValueError, match="sum to 1"):
        split_records(general, (0.5, 0.1, 0.1))


def test_near_miss_pairs_cover_every_mistake_and_differ_from_chosen(general: list[Record]) -> None:
    pairs = near_miss_pairs(general, seed=0)
    kinds = Counter(p.meta["kind"] for p in pairs)
    assert set(kinds) == set(PAIR_KINDS)
    by_id = {r.meta.id: r for r in general}
    for pair in pairs:
        record = by_id[pair.meta["source"]]
        assert pair.chosen == json.loads(dumps(record))["messages"][-1]
        assert pair.rejected != pair.chosen and pair.rejected.get("tool_calls")
        assert len(pair.messages) == len(record.messages) - 1
        tools = {t.name: t for t in server_tools(record)}
        calls = [ParsedCall(c["function"]["name"], json.dumps(c["function"]["arguments"]))
                 for c in pair.rejected["tool_calls"]]  # fmt: skip
        if pair.meta["kind"] in ("wrong_type", "missing_arg"):
            assert any(validate_call(c, tools) for c in calls)  # the schema alone rejects these
        if pair.meta["kind"] == "wrong_function":
            assert [c.name for c in calls] != [c.function.name for c in record.answer.tool_calls or ()]
        if pair.meta["kind"] == "missing_call":  # the first calls, the last one(s) left out
            assert pair.rejected["tool_calls"] == pair.chosen["tool_calls"][: len(calls)]
            assert 0 < len(calls) < len(pair.chosen["tool_calls"])
        if pair.meta["kind"] == "extra_call":  # the one right call, then a declared tool's call
            assert pair.rejected["tool_calls"][:1] == pair.chosen["tool_calls"] and len(calls) == 2
            assert calls[1].name in tools and calls[1].name != calls[0].name
            assert not validate_call(calls[1], tools)  # a valid call, only not asked for
    assert near_miss_pairs(general, seed=0) == pairs


def test_an_unknown_held_out_tool_is_refused() -> None:
    with pytest.raises(CatalogueError, match=r"held-out tools \['get_wether'\] are in no catalogue"):
        generate([GENERAL], 10, seed=0, config=SynthConfig(part="train", held_out_tools=("get_wether",)))
