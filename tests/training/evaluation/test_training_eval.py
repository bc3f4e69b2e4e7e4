"""Evaluation mechanics on real parts: the tiny model in-process (transformers + PEFT) and the
real gateway on loopback through the official openai client. The tiny model's weights are
random, so these tests assert mechanics (validity under constraints, files, counts, the same
prompt as the gateway), never quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from server.types import Message, Tool
from tests.support.live import PING, Live
from tests.support.lora_helpers import PEFT_WARNINGS, make_peft_adapter
from training.__main__ import main
from training.data.records import parse_record
from training.demo.tiny import TinyModel
from training.evaluation.evaluate import score_items, summarize
from training.evaluation.generate import EndpointBackend, Prompt, SampleSettings, TransformersBackend
from training.evaluation.items import EvalItem, bfcl_categories, bfcl_items, record_item
from training.evaluation.verifier import aggregate

# Short calls only (an enum, an integer, no arguments), so a random model's calls fit max_tokens.
CITY = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
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
TOOLS = [CITY, LIGHT, PING]
ONE_CALL = {"parallel_tool_calls": False}
QUESTIONS = ["Weather in Paris?", "Lights on please.", "Ping the server.", "Is it cold in Oslo?",
             "Switch the light off", "Hello there!", "Tell me a joke.", "Thanks, bye."]  # fmt: skip
GREEDY = SampleSettings(max_tokens=48)


def _records() -> list[EvalItem]:
    """Five records expecting a call, three expecting none (the tools stay declared)."""
    items = []
    for i, question in enumerate(QUESTIONS):
        if i < 5:
            call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            answer: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            answer = {"role": "assistant", "content": "Hello."}
        kind = "single" if i < 5 else "no_tool_chitchat"
        record = {"messages": [{"role": "user", "content": question}, answer], "tools": TOOLS,
                  "meta": {"id": f"r{i}", "kind": kind, "source": "test"}}  # fmt: skip
        items.append(record_item(parse_record(record)))
    return items


@pytest.fixture(scope="module")
def in_process(tiny_model: TinyModel) -> TransformersBackend:
    return TransformersBackend(tiny_model.hf_dir, threads=1)


def test_required_at_the_gateway_gives_only_valid_calls(gateway: Live) -> None:
    backend = EndpointBackend(gateway.v1, "tiny", tool_choice="required", extra_body=ONE_CALL)
    scored = score_items(_records(), backend, GREEDY)
    assert all(s.sample.error is None and s.sample.parsed.calls for s in scored)
    four = aggregate(s.verdict for s in scored)
    assert four.valid_call_rate == 1.0 and four.expected_call == 5
    assert four.false_call_rate == 1.0  # required forces a call on the three negatives too
    assert all(s.verdict.reward in (1.0, 0.5, 0.25) for s in scored if s.verdict.expected_call)
    by_argument = summarize(scored)["by_argument"]  # get_weather has one argument, city
    assert set(by_argument) <= {"get_weather.city"}
    checked = sum(bool(s.verdict.valid and s.verdict.name_ok) for s in scored)
    assert sum(row["n"] for row in by_argument.values()) == checked
    right = [s for s in scored if s.verdict.args_ok]
    assert not right or by_argument["get_weather.city"]["accuracy"] * by_argument["get_weather.city"]["n"] == len(right)


def test_tool_choice_none_at_the_gateway_never_calls(gateway: Live) -> None:
    backend = EndpointBackend(gateway.v1, "tiny", tool_choice="none")
    four = aggregate(s.verdict for s in score_items(_records(), backend, GREEDY))
    assert four.false_call_rate == 0.0 and four.valid_call_rate == 0.0 and four.mean_reward == pytest.approx(3 / 8)


def test_named_tool_choice_and_several_seeded_answers(gateway: Live) -> None:
    named = {"type": "function", "function": {"name": "set_light"}}
    backend = EndpointBackend(gateway.v1, "tiny", tool_choice=named, extra_body=ONE_CALL)
    prompt = Prompt((Message("user", "Lights on please."),), tuple(_records()[0].prompt.tools))
    (answers,) = backend.sample([prompt], SampleSettings(n=3, temperature=1.0, max_tokens=48, seed=5))
    assert len(answers) == 3
    assert all([c.name for c in a.parsed.calls] == ["set_light"] for a in answers)
    again = backend.sample([prompt], SampleSettings(n=3, temperature=1.0, max_tokens=48, seed=5))[0]
    assert [a.parsed for a in again] == [a.parsed for a in answers]  # seeded (call ids aside)


def test_requests_in_flight_together_come_back_in_prompt_order(gateway: Live) -> None:
    # Each prompt declares one tool and `required` forces it, so a call's name tells which prompt
    # it answers. (The words may differ from one-at-a-time answers: a batch changes the
    # kernels' summation order, and a random model's flat logits flip on that.)
    declared = _records()[0].prompt.tools
    prompts = [Prompt((Message("user", f"request {i}"),), (declared[i % 3],)) for i in range(9)]
    backend = EndpointBackend(gateway.v1, "tiny", tool_choice="required", extra_body=ONE_CALL, concurrency=4)
    answers = backend.sample(prompts, SampleSettings(n=2, max_tokens=48, temperature=1.0, seed=3))
    assert [len(row) for row in answers] == [2] * len(prompts)
    names = [{c.name for a in row for c in a.parsed.calls} for row in answers]
    # (an answer may run out of max_tokens inside a random model's long key: no call then)
    assert names == [{p.tools[0].name} for p in prompts]


def test_a_refused_request_is_a_counted_error_not_a_crash(gateway: Live) -> None:
    tool = Tool("f", "", {"type": "object", "properties": {}})
    prompt = Prompt((Message("user", "hi"),), (tool, tool))  # duplicate names: the gateway answers 400
    (answers,) = EndpointBackend(gateway.v1, "tiny", tool_choice="required").sample([prompt], GREEDY)
    assert answers[0].error is not None and answers[0].error.startswith("HTTP 400")
    down = EndpointBackend("http://127.0.0.1:9/v1", "tiny", timeout=5).sample([prompt], GREEDY)
    assert down[0][0].error is not None and "Connection" in down[0][0].error


def test_in_process_prompt_is_the_gateways(gateway: Live, in_process: TransformersBackend) -> None:
    item = _records()[1]
    messages = [{"role": m.role, "content": m.content} for m in item.prompt.messages]
    served = httpx.post(gateway.base_url + "/apply-template", json={"messages": messages, "tools": TOOLS}).json()
    assert in_process.render(item.prompt) == served["prompt"]


def test_in_process_greedy_answers_match_the_gateways(gateway: Live, in_process: TransformersBackend) -> None:
    # Same weights in transformers and llama.cpp, same prompt text, greedy: the same answer,
    # so what is scored in-process is what the gateway would have served.
    prompt = Prompt((Message("user", "Hello there!"),))
    settings = SampleSettings(max_tokens=12)
    (mine,) = in_process.sample([prompt], settings)
    (theirs,) = EndpointBackend(gateway.v1, "tiny").sample([prompt], settings)
    assert mine[0].text == theirs[0].parsed.content and mine[0].tokens == 12


def test_in_process_sampling_is_seeded_and_stops_at_end_of_turn(in_process: TransformersBackend) -> None:
    prompts = [item.prompt for item in _records()[:3]]
    hot = SampleSettings(n=4, temperature=1.5, max_tokens=16, seed=1)
    first = in_process.sample(prompts, hot)
    assert [len(row) for row in first] == [4, 4, 4]
    texts = [[s.text for s in row] for row in first]
    assert texts == [[s.text for s in row] for row in in_process.sample(prompts, hot)]
    other = in_process.sample(prompts, SampleSettings(n=4, temperature=1.5, max_tokens=16, seed=2))
    assert texts != [[s.text for s in row] for row in other]
    tok = in_process.tokenizer
    ids = tok.encode("<tool_call>\n{}\n</tool_call>", add_special_tokens=False)
    cut = in_process.decode([*ids, tok.convert_tokens_to_ids("<|im_end|>"), *ids])
    assert cut.text == "<tool_call>\n{}\n</tool_call>" and cut.tokens == len(ids) + 1
    assert len(cut.parsed.calls) == 1


@PEFT_WARNINGS[0]
def test_an_adapter_changes_the_in_process_answers(tiny_model: TinyModel, tmp_path: Path) -> None:
    from peft import LoraConfig

    make_peft_adapter(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                      tmp_path / "adapter")  # fmt: skip
    prompt = [Prompt((Message("user", "Hello there!"),))]
    plain = TransformersBackend(tiny_model.hf_dir, threads=1).sample(prompt, GREEDY)
    adapted = TransformersBackend(tiny_model.hf_dir, tmp_path / "adapter", threads=1)
    assert adapted.describe()["adapter"] == str(tmp_path / "adapter")
    assert adapted.sample(prompt, GREEDY)[0][0].text != plain[0][0].text


def test_bfcl_items_and_aliases() -> None:
    assert bfcl_categories(["simple", "live"])[:2] == ["simple_python", "live_simple"]
    assert "irrelevance" in bfcl_categories(["all"]) and len(bfcl_categories(["all"])) == 11
    with pytest.raises(ValueError, match="unsupported BFCL category"):
        bfcl_categories(["multi_turn_base"])
    (item,) = bfcl_items("simple_python", limit=1)
    assert item.expected.possible and item.prompt.tools[0].name == "calculate_triangle_area"
    assert not bfcl_items("irrelevance", 1)[0].expected.expects_call
    assert bfcl_items("live_relevance", 1)[0].expected.any_call


@pytest.mark.slow
def test_eval_cli_against_the_gateway_writes_the_run_folder(gateway: Live, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["eval", "--endpoint", gateway.v1, "--served-model", "tiny", "--tool-choice", "required",
                 "--bfcl", "simple", "parallel", "irrelevance", "live_relevance", "--limit", "2",
                 "--max-tokens", "64", "--out", str(out)])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["bfcl"]["categories"]) == {"simple_python", "parallel", "irrelevance", "live_relevance"}
    assert all(c["n"] == 2 for c in metrics["bfcl"]["categories"].values())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["group"] for r in rows} == set(metrics["by_group"])
    # required: a call, unless the random model's call ran past max_tokens (then dropped).
    finished = [r for r in rows if "error" not in r["answer"] and r["answer"]["finish_reason"] != "length"]
    assert finished and all(r["verdict"]["called"] and r["verdict"]["valid"] for r in finished)
    assert all(not r["bfcl_pass"] for r in finished if r["group"] == "irrelevance")
    report = (out / "report.md").read_text()
    assert "| simple_python | 2 |" in report and "plots/bfcl.png" in report
    for chart in ("four_numbers", "by_group", "bfcl"):
        assert (out / "plots" / f"{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "config.yaml").read_text())["served_model"] == "tiny"


@pytest.mark.slow
def test_eval_cli_in_process_counts_bad_lines(tiny_model: TinyModel, tmp_path: Path) -> None:
    data = tmp_path / "test.jsonl"
    lines = [json.dumps(_raw(i)) for i in range(3)] + ["{not json", json.dumps({"messages": []})]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["eval", "--model", str(tiny_model.hf_dir), "--data", str(data), "--threads", "1",
                 "--max-tokens", "24", "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["records"] == 3 and metrics["skipped"]["count"] == 2
    assert metrics["backend"]["tool_format"] == "hermes"
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert "input lines skipped: 2" in (out / "report.md").read_text()


def _raw(i: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": QUESTIONS[i]}, {"role": "assistant", "content": "ok"}],
        "tools": TOOLS,
        "meta": {"id": f"x{i}", "kind": "no_tool_chitchat", "source": "test"},
    }


def test_eval_cli_refuses_mixed_flags(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--served-model"):
        main(["eval", "--endpoint", "http://x/v1", "--bfcl", "simple", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file"):
        main(["eval", "--model", str(tmp_path), "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])


def test_summary_reports_bfcl_mean_over_categories() -> None:
    metrics = summarize([])
    assert metrics["overall"]["records"] == 0 and "bfcl" not in metrics and metrics["by_argument"] == {}


@PEFT_WARNINGS[0]
def test_an_adapter_folder_brings_its_template_and_tool_format(tiny_model: TinyModel, tmp_path: Path) -> None:
    from peft import LoraConfig

    from server.adapters.manifest import AdapterManifest, BaseModelRef, LoraSpec, write_manifest

    folder = make_peft_adapter(tiny_model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]), tmp_path / "a")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}>")
    lora = LoraSpec(rank=2, alpha=4, target_modules=["q_proj"])
    base = BaseModelRef(id="tiny", sha256="0")
    write_manifest(folder, AdapterManifest(name="a", base_model=base, tool_format="pythonic", lora=lora))
    backend = TransformersBackend(tiny_model.hf_dir, folder, threads=1)
    assert backend.format.name == "pythonic" and backend.describe()["tool_format"] == "pythonic"
    assert backend.render(Prompt((Message("user", "hi"),))) == "[hi]>"
    assert TransformersBackend(tiny_model.hf_dir, folder, "hermes", threads=1).format.name == "hermes"
