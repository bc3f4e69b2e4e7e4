"""`python -m training build-demo` with the shipped recipe, as a user runs it: the demo model
trained from scratch, its support adapter, the targets on held-out prompts, and the gateway
serving both with no --model. About 12 minutes on 2 cores: the slowest test, run once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from server.adapters.manifest import read_manifest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like a checkout after build-demo: models/demo, adapters/support-demo,
    runs/demo. Built by the real command with the real recipe (training/configs/demo.yaml), or
    CALLGATE_TEST_DEMO_HOME: a folder where build-demo already ran (to rerun these tests fast)."""
    built = os.environ.get("CALLGATE_TEST_DEMO_HOME")
    if built:
        return Path(built)
    home = tmp_path_factory.mktemp("demo")
    out = subprocess.run(
        [sys.executable, "-m", "training", "build-demo"],
        cwd=home,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=40 * 60,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return home


def _report(demo: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((demo / "runs" / "demo" / "report.json").read_text())


def test_the_adapter_is_what_makes_the_support_tools_work(demo: Path) -> None:
    scores = _report(demo)["scores"]
    exported, base = scores[_report(demo)["exported"]], scores["base"]
    # The base model never saw the support tools; it calls tools it knows, or none.
    assert (base["valid_call_rate"] or 0) <= 0.1
    assert exported["valid_call_rate"] - (base["valid_call_rate"] or 0) >= 0.25
    assert exported["tool_name_accuracy"] - (base["tool_name_accuracy"] or 0) >= 0.25


# Issue #3's targets, not all met yet: valid calls and false calls are, but tool names (parallel
# requests that mix tools) and arguments (reasons worded as training never saw) are not. Measured
# in docs/demo.md; kept here so that a recipe that meets them turns these into passes (strict=False:
# they report XPASS then).
NOT_MET = "issue #3 targets not met yet by the shipped recipe (docs/demo.md)"


def test_the_adapter_holds_validity_and_false_calls_near_their_targets(demo: Path) -> None:
    # Three seeds at 1 thread gave valid 0.94-0.96 and false calls 0.01-0.04, CI's 2-thread
    # build 0.94 and 0.07 (docs/demo.md); the margin is for that drift, not for a worse recipe.
    exported = _report(demo)["scores"][_report(demo)["exported"]]
    assert exported["valid_call_rate"] >= 0.85
    assert exported["false_call_rate"] <= 0.1


@pytest.mark.xfail(reason=NOT_MET, strict=False)
def test_demo_adapter_meets_the_issue_targets(demo: Path) -> None:
    exported = _report(demo)["scores"][_report(demo)["exported"]]
    assert exported["valid_call_rate"] >= 0.9
    assert exported["tool_name_accuracy"] >= 0.9
    assert exported["argument_match"] >= 0.8
    assert exported["false_call_rate"] <= 0.05


@pytest.mark.xfail(reason=NOT_MET, strict=False)
def test_preference_training_improves_argument_match_over_sft_alone(demo: Path) -> None:
    scores = _report(demo)["scores"]
    assert scores["dpo"]["argument_match"] > scores["sft"]["argument_match"]


def test_the_adapter_copies_order_ids_from_the_request(demo: Path) -> None:
    # The copy curriculum's job: order ids are random, so a right one was copied, not recalled.
    exported = _report(demo)["scores"][_report(demo)["exported"]]
    ids = exported["by_argument"]["track_order.order_id"]
    assert ids["n"] >= 10 and ids["accuracy"] >= 0.5


def test_demo_outputs_are_where_the_gateway_looks(demo: Path) -> None:
    model = demo / "models" / "demo"
    assert (model / "model.gguf").is_file() and (model / "config.json").is_file()
    manifest = read_manifest(demo / "adapters" / "support-demo")
    assert manifest.tool_format == "hermes"
    assert manifest.base_model.gguf_sha256 is not None
    exported = _report(demo)["scores"][_report(demo)["exported"]]
    assert manifest.scores["support_test.valid_call_rate"] == pytest.approx(exported["valid_call_rate"])
    report = (demo / "runs" / "demo" / "report.md").read_text()
    assert "valid-call rate" in report and "false-call rate" in report


def test_gateway_with_no_model_serves_the_demo_and_its_adapter(demo: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port)], cwd=demo,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {"demo", "support-demo"}
        assert cards["support-demo"].model_extra["parent"] == "demo"
        tools = [json.loads(line) for line in _support_tools(demo)]
        order = {"type": "function", "function": {"name": "track_order"}}
        r = client.chat.completions.create(
            model="support-demo",
            tools=tools,
            tool_choice=order,
            temperature=0,
            messages=[{"role": "user", "content": "where is my package? the order number is 5550123"}],
        )
        # Through the gateway the trained adapter's call is always usable: the grammar holds
        # it to the declared schema (digits, 6 to 8 of them) whatever the model would write.
        [call] = r.choices[0].message.tool_calls
        assert call.function.name == "track_order"
        order_id = json.loads(call.function.arguments)["order_id"]
        assert order_id.isdigit() and 6 <= len(order_id) <= 8
        base = client.chat.completions.create(
            model="demo",
            tools=tools,
            tool_choice=order,
            temperature=0,
            messages=[{"role": "user", "content": "track 5550123"}],
        )
        assert base.choices[0].message.tool_calls[0].function.name == "track_order"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def _support_tools(demo: Path) -> list[str]:
    """The support catalogue's three tools, as the held-out records declare them."""
    found: dict[str, str] = {}
    with (demo / "runs" / "demo" / "data-support" / "test.jsonl").open() as f:
        for line in f:
            for tool in json.loads(line)["tools"]:
                found.setdefault(tool["function"]["name"], json.dumps(tool))
    assert {"track_order", "request_refund", "escalate"} <= set(found), sorted(found)
    return list(found.values())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the gateway did not become healthy")
