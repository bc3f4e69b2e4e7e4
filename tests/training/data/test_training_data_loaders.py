"""Source loaders: small fixtures in each source's real format (tests/data/training_sources/)
converted exactly, malformed rows counted with their reason and skipped, BFCL read from the
bfcl-eval wheel, parquet and `datasets` folders read the same as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.data.loaders import convert, load_bfcl
from training.data.records import Record, render_record, to_json
from training.data.sources.xlam import python_type

DATA = Path(__file__).resolve().parents[2] / "data" / "training_sources"
HERMES = (Path(__file__).resolve().parents[3] / "training" / "templates" / "hermes.jinja").read_text()


def _messages(record: Record) -> list[dict[str, Any]]:
    return to_json(record)["messages"]


def _reasons(bad: Any) -> dict[str, str]:
    return {b.where: b.reason for b in bad.items}


@pytest.mark.parametrize(
    ("text", "schema", "optional"),
    [
        ("str", {"type": "string"}, False),
        ("int", {"type": "integer"}, False),
        ("float", {"type": "number"}, False),
        ("bool", {"type": "boolean"}, False),
        ("str, optional", {"type": "string"}, True),
        ("int, Optional", {"type": "integer"}, True),
        ("Optional[str]", {"type": "string"}, True),
        ("List[int]", {"type": "array", "items": {"type": "integer"}}, False),
        ("List[List[float]]", {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, False),
        ("list", {"type": "array"}, False),
        ("Tuple[int, int]", {"type": "array", "items": {"type": "integer"}}, False),
        ("Tuple[int, str]", {"type": "array"}, False),
        ("dict", {"type": "object"}, False),
        ("Dict[str, Any]", {"type": "object"}, False),
        ("Union[int, float]", {"type": ["integer", "number"]}, False),
        ("Optional[List[str]]", {"type": "array", "items": {"type": "string"}}, True),
        ("Any", {}, False),
        ("Callable", {}, False),
    ],
)
def test_xlam_python_types_map_to_json_schema(text: str, schema: dict[str, Any], optional: bool) -> None:
    assert python_type(text) == (schema, optional)


def test_xlam_rows_convert_exactly_and_bad_rows_are_reported() -> None:
    records, bad = convert(DATA / "xlam.json", "xlam")
    assert [r.meta.id for r in records] == ["xlam:1", "xlam:2", "xlam:3"]
    assert [r.kind for r in records] == ["parallel", "parallel", "no_tool_irrelevant"]
    first = to_json(records[0])
    assert first["messages"][1]["tool_calls"][1] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "live_giveaways_by_type", "arguments": {"type": "game"}},
    }
    # A parameter with a default is not required.
    assert first["tools"][0]["function"]["parameters"] == {
        "type": "object",
        "properties": {
            "type": {"type": "string", "description": "The type of giveaways to retrieve (e.g., game, loot, beta)."}
        },
    }
    format_date = to_json(records[1])["tools"][2]["function"]["parameters"]
    assert format_date["required"] == ["date", "input_format", "locales", "tz"]
    assert format_date["properties"]["output_format"]["type"] == "string"
    assert format_date["properties"]["strict"] == {"type": "boolean", "description": "Fail on ambiguous dates."}
    assert format_date["properties"]["tz"]["type"] == ["integer", "string"]
    assert _messages(records[2])[1] == {"role": "assistant", "content": ""}
    reasons = _reasons(bad)
    assert list(reasons) == ["index 3", "index 4", "index 5"]
    assert reasons["index 3"].startswith("neither JSON nor a Python literal")
    assert reasons["index 4"] == "message 1: call of undeclared tool 'to_hex'"
    assert "'two' is not of type 'integer'" in reasons["index 5"]  # fmt: skip


def test_glaive_transcripts_convert_with_single_quoted_arguments() -> None:
    records, bad = convert(DATA / "glaive.jsonl", "glaive")
    assert len(records) == 3
    bmi = _messages(records[0])
    assert [m["role"] for m in bmi] == ["system", "user", "assistant", "tool", "assistant"]
    assert (
        bmi[0]["content"] == "You are a helpful assistant with access to the following functions. Use them if required"
    )
    assert bmi[2]["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "calculate_bmi", "arguments": {"weight": 70, "height": 1.75}},
        }
    ]
    assert bmi[3] == {"role": "tool", "content": '{"bmi": 22.86}', "tool_call_id": "call_0"}
    assert bmi[4]["content"] == "Your Body Mass Index (BMI) is 22.86, which is within the healthy range."
    assert records[0].kind == "multi_turn"
    note = records[1]
    assert note.tool_names() == ["calculate_bmi", "create_note"]
    assert note.answer.tool_calls and note.answer.tool_calls[0].function.arguments == {
        "title": "Trip",
        "content": "don't forget the passport",
    }
    assert records[2].tools == [] and records[2].kind == "no_tool_chitchat"
    reasons = _reasons(bad)
    assert reasons["line 4"] == "a function response without a call before it"
    assert reasons["line 5"].startswith("function schemas in the system prompt are not JSON")
    assert reasons["line 6"].startswith("invalid JSON")  # fmt: skip


def test_hermes_conversations_convert_with_python_literal_calls_and_responses() -> None:
    records, bad = convert(DATA / "hermes.json", "hermes")
    assert len(records) == 2
    messages = _messages(records[0])
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]  # Hermes prompt dropped
    calls = messages[1]["tool_calls"]
    assert [c["function"] for c in calls] == [
        {"name": "get_stock_fundamentals", "arguments": {"symbol": "TSLA"}},
        {"name": "get_current_weather", "arguments": {"location": "Austin, TX", "unit": "fahrenheit"}},
    ]
    assert [m["tool_call_id"] for m in messages[2:4]] == ["call_0", "call_1"]
    assert json.loads(messages[2]["content"]) == {"symbol": "TSLA", "pe_ratio": 49.6, "dividend_yield": None}
    assert records[0].tool_names() == ["get_current_weather", "get_stock_fundamentals"]
    assert records[0].kind == "multi_turn" and records[0].meta.model_extra == {
        "category": "Finance",
        "subcategory": "Stocks",
        "task": "Stock fundamentals",
    }
    assert records[1].kind == "single"
    reasons = _reasons(bad)
    assert reasons["index 2"] == "message 1: call of undeclared tool 'get_stock_price'"
    assert reasons["index 3"].startswith("neither JSON nor a Python literal")  # fmt: skip


def test_openai_chat_rows_keep_weights_parts_and_legacy_functions() -> None:
    records, bad = convert(DATA / "openai.jsonl", "openai")
    assert len(records) == 3
    boston, paris, lima = (_messages(r) for r in records)
    assert boston[2]["tool_calls"][0]["function"]["arguments"] == {"location": "Boston, MA"}
    assert records[0].kind == "multi_turn"
    assert paris[0]["content"] == "Weather in Paris, in celsius?"
    assert paris[1]["train"] is False and "train" not in paris[3]  # weight 0 -> out of the loss
    assert lima[1]["tool_calls"][0]["id"] == lima[2]["tool_call_id"] == "call_0"
    assert records[2].tool_names() == ["get_current_weather"]
    reasons = _reasons(bad)
    assert reasons["line 3"].startswith("invalid JSON")
    assert reasons["line 5"] == "message 1: call of undeclared tool 'get_current_weather'"


def test_bfcl_files_become_evaluation_records_with_possible_answers() -> None:
    records, bad = load_bfcl("simple_python", DATA / "bfcl_questions.jsonl", DATA / "bfcl_answers.jsonl")
    assert [r.meta.id for r in records] == ["bfcl:simple_python_900", "bfcl:parallel_900", "bfcl:irrelevance_900"]
    area = records[0]
    assert area.tool_names() == ["geometry_circle_area"]
    assert area.tools[0].function.parameters["properties"]["radius"]["type"] == "number"
    assert area.answer.tool_calls and area.answer.tool_calls[0].function.arguments == {"radius": 3.0, "units": "meters"}
    assert area.meta.model_extra and area.meta.model_extra["possible_answers"] == [
        {"geometry_circle_area": {"radius": [3.0, 3], "units": ["meters", "m", ""]}}
    ]
    assert records[1].kind == "parallel" and len(records[1].answer.tool_calls or ()) == 2
    assert records[2].kind == "no_tool_irrelevant" and records[2].answer.content == ""
    assert _reasons(bad) == {"line 4": "no possible answer for simple_python_901 in category simple_python"}


def test_bfcl_categories_from_the_wheel_convert_and_render() -> None:
    simple, bad = load_bfcl("simple_python")
    assert len(simple) >= 0.95 * (len(simple) + len(bad)) and len(simple) > 300
    irrelevance, _ = load_bfcl("irrelevance")
    assert irrelevance and all(r.kind == "no_tool_irrelevant" for r in irrelevance)
    for record in simple[:50] + irrelevance[:20]:
        assert "<tools>" in render_record(record, HERMES, upto=len(record.messages) - 1)


def test_every_converted_record_renders_with_the_hermes_template() -> None:
    for fmt, name in (("xlam", "xlam.json"), ("glaive", "glaive.jsonl"), ("hermes", "hermes.json"),
                      ("openai", "openai.jsonl")):  # fmt: skip
        records, _ = convert(DATA / name, fmt)
        for record in records:
            assert render_record(record, HERMES).endswith("<|im_end|>\n")


def test_parquet_files_and_datasets_folders_read_like_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = json.loads((DATA / "xlam.json").read_text())
    folder = tmp_path / "xlam_hub_layout"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    expected, _ = convert(DATA / "xlam.json", "xlam")
    from_parquet, bad = convert(folder / "train.parquet", "xlam")
    assert [to_json(r) for r in from_parquet] == [to_json(r) for r in expected] and len(bad) == 3
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from_datasets, _ = convert(folder, "xlam")  # the `datasets.load_dataset` path, offline on a local folder
    assert [to_json(r) for r in from_datasets] == [to_json(r) for r in expected]


def test_unknown_formats_and_missing_files_are_refused() -> None:
    with pytest.raises(ValueError, match="known: glaive, hermes, openai, xlam"):
        convert(DATA / "xlam.json", "sharegpt")
    with pytest.raises(FileNotFoundError):
        convert(DATA / "missing.jsonl", "openai")


def test_a_limit_stops_early() -> None:
    records, _ = convert(DATA / "xlam.json", "xlam", limit=1)
    assert len(records) == 1
