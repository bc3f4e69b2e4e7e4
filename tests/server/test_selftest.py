"""`python -m server selftest` as a user runs it: a real process against the tiny model (every
mode ok, exit 0), and against a gateway that breaks a mode (the table says FAIL, exit 1); plus
the contract rules and the table on typed results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from server.selftest import MODES, Answer, Check, _contract, exit_code, format_table
from tests.support.live import serve

if TYPE_CHECKING:
    from training.demo.tiny import TinyModel

ROOT = Path(__file__).resolve().parents[2]


def _selftest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "selftest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )


def test_selftest_passes_on_the_tiny_model(tiny_model: TinyModel) -> None:
    out = _selftest("--model", str(tiny_model.gguf), "--served-model-name", "tiny", "--seeds", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if line.startswith("tiny ")]
    assert {(r[2], r[3]) for r in rows} == {(m, s) for m in MODES for s in ("no", "yes")}
    assert all(r[1] == "hermes" and r[4] == "ok" for r in rows)
    assert "10/10 checks ok" in out.stdout
    assert "format=hermes (detected)" in out.stderr  # the start-up line says where the format came from


def _broken_gateway() -> FastAPI:
    """An OpenAI-shaped gateway that answers every request with a valid get_weather call (so
    tool_choice none is broken), and streams a different one (so every stream is broken)."""
    app = FastAPI()

    def call(city: str) -> dict[str, Any]:
        return {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "broken", "object": "model", "tool_format": "hermes"}]}

    @app.post("/v1/chat/completions")
    def complete(body: dict[str, Any]) -> Any:
        if body.get("stream"):
            delta = {"role": "assistant", "tool_calls": [call("Rome")]}
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": "tool_calls"}]}
            return StreamingResponse(
                iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]), media_type="text/event-stream"
            )
        message = {"role": "assistant", "content": None, "tool_calls": [call("Paris")]}
        return {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}

    return app


@pytest.fixture()
def broken_url() -> Iterator[str]:
    url, server, thread = serve(_broken_gateway())
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_broken_mode_fails_the_selftest(broken_url: str) -> None:
    out = _selftest("--url", broken_url, "--seeds", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    rows = {
        (r[2], r[3]): " ".join(r[4:])
        for r in (line.split() for line in out.stdout.splitlines()[1:])
        if r and r[0] == "broken"
    }
    assert rows[("none", "no")].startswith("FAIL: called get_weather under tool_choice none")
    assert rows[("required", "no")] == "ok"
    assert rows[("required", "yes")].startswith("FAIL: stream differs from non-stream")
    assert "4/10 checks ok, 6 FAILED" in out.stdout


def test_an_unreachable_gateway_is_a_usage_error() -> None:
    out = _selftest("--url", "http://127.0.0.1:9", "--seeds", "1")
    assert out.returncode == 2 and "callgate selftest:" in out.stderr


# --- the rules and the table, on typed results ------------------------------------------------

OK_CALL = ("get_weather", '{"city": "Paris"}')


@pytest.mark.parametrize(
    "mode, answer, error",
    [
        ("required", Answer("", [OK_CALL], "tool_calls"), None),
        ("required", Answer("", [], "length"), None),  # cut by max_tokens: no promise broken
        ("required", Answer("hi", [], "stop"), "no tool call"),
        ("named", Answer("", [("track_order", '{"order_id": 1}')], "tool_calls"), "not only get_weather"),
        ("none", Answer("", [OK_CALL], "tool_calls"), "under tool_choice none"),
        ("parallel_false", Answer("", [OK_CALL, OK_CALL], "tool_calls"), "2 calls"),
        ("auto", Answer("", [("rm_rf", "{}")], "tool_calls"), "undeclared tool 'rm_rf'"),
        ("auto", Answer("", [("get_weather", "{")], "tool_calls"), "invalid arguments"),
        ("auto", Answer("", [OK_CALL], "stop"), "finish_reason stop with calls"),
        ("auto", Answer("text", [], "stop"), None),
    ],
)
def test_contract_rules(mode: str, answer: Answer, error: str | None) -> None:
    found = _contract(mode, answer)
    assert found is None if error is None else (found is not None and error in found), found


def test_table_and_exit_code() -> None:
    checks = [Check("m", "hermes", "auto", False), Check("m", "hermes", "none", True, "called x")]
    lines = format_table(checks).splitlines()
    assert lines[0].split() == ["model", "format", "mode", "stream", "result"]
    assert lines[1].split() == ["m", "hermes", "auto", "no", "ok"]
    assert lines[2].endswith("FAIL: called x") and " yes " in lines[2]
    assert exit_code(checks) == 1
    assert exit_code(checks[:1]) == 0
    assert exit_code([]) == 1  # nothing checked is not a pass
