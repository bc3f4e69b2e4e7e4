"""The demo recipe's chat-template choice: `hermes_compact.jinja` lists each tool on one line,
yet everything after the system turn (calls, tool results, answers) renders exactly as
`hermes.jinja` does, so the gateway detects and parses it as Hermes; a template name that does
not exist stops build-demo before any training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server import templates
from server.toolcalls.detect import detect_format
from server.types import Message, Tool
from training.data.catalogue import SUPPORT
from training.data.records import Record, render_record
from training.data.synth import generate

TEMPLATES = Path(__file__).resolve().parents[3] / "training" / "templates"
HERMES = (TEMPLATES / "hermes.jinja").read_text(encoding="utf-8")
COMPACT = (TEMPLATES / "hermes_compact.jinja").read_text(encoding="utf-8")
SYSTEM_END = "<|im_end|>\n"


def test_the_compact_template_is_detected_as_hermes() -> None:
    detection = detect_format(COMPACT)
    assert detection.format == "hermes", detection.reason


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return generate([SUPPORT], 120, seed=3)


def test_only_the_tool_list_differs_from_hermes(records: list[Record]) -> None:
    kinds = set()
    for record in records:
        hermes, compact = render_record(record, HERMES), render_record(record, COMPACT)
        assert hermes.split(SYSTEM_END, 1)[1] == compact.split(SYSTEM_END, 1)[1]
        if record.tools:
            assert len(compact) < len(hermes)
        kinds.add(record.meta.kind)
    assert {"single", "parallel", "multi_turn"} <= kinds  # calls, results and answers all compared


def test_each_tool_is_one_line_with_its_parameters() -> None:
    refund = Tool(name="request_refund", description="Open a refund request.", parameters={
        "type": "object", "required": ["order_id"], "properties": {
            "order_id": {"type": "string", "description": "dropped: one line per tool"},
            "reason": {"type": "string", "enum": ["damaged", "late_delivery"]},
            "items": {"type": "array", "items": {"type": "integer"}}}})  # fmt: skip
    text = templates.render(COMPACT, [Message(role="user", content="hi")], [refund, Tool(name="ping")])
    lines = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0].split("\n")
    assert lines == [
        'request_refund(order_id: string, reason?: "damaged"|"late_delivery", '
        'items?: {"type": "array", "items": {"type": "integer"}}): Open a refund request.',
        "ping()",
    ]


def test_an_unknown_template_stops_build_demo_before_training(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "training", "build-demo", "--set", "template=nope.jinja",
               "--set", f"work={tmp_path / 'w'}"]  # fmt: skip
    out = subprocess.run(command, cwd=TEMPLATES.parents[1], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "nope.jinja" in out.stderr and "hermes_compact.jinja" in out.stderr
    assert not (tmp_path / "w").exists()


def test_the_recipe_defaults_are_the_shipped_recipe() -> None:
    # build-demo always loads demo.yaml; defaults that drift from it would describe another recipe.
    from training.demo.build import RECIPE, DemoConfig
    from training.recipes.loader import load_recipe

    assert load_recipe(DemoConfig, RECIPE) == DemoConfig()
