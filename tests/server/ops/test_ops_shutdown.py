"""Graceful shutdown of a real `python -m server`: after SIGTERM the answer being streamed
finishes, new requests get 503 (so a load balancer moves on), and the process exits; past
`server.shutdown_timeout_s` a stream still running ends with a 503 error event."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import LONG, wait_healthy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(model: Path, tmp_path: Path, shutdown_timeout_s: float) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    config = tmp_path / "callgate.yaml"
    config.write_text(f"model:\n  served_name: tiny\nserver:\n  shutdown_timeout_s: {shutdown_timeout_s}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--config", str(config), "--model", str(model), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url + "/health")
    return proc, url


def _events(lines: Iterator[str]) -> list[Any]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def test_sigterm_finishes_the_stream_and_refuses_new_requests(tiny_model: Any, tmp_path: Path) -> None:
    proc, url = _start(tiny_model.gguf, tmp_path, shutdown_timeout_s=60)
    # Long enough to still be generating when the probes below arrive (else the drained server
    # exits first and the probe meets a closed port).
    body = {**LONG, "stream": True, "max_tokens": 1500}
    try:
        with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            next(lines)  # generating
            proc.send_signal(signal.SIGTERM)
            refused = httpx.post(url + "/v1/chat/completions", json=LONG, timeout=10)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert httpx.get(url + "/health", timeout=10).status_code == 503  # not ready any more
            rest = _events(lines)
        assert rest[-1] == "[DONE]"
        assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"  # finished, not cut
    finally:
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "draining: 1 requests in flight" in output and "Application shutdown complete" in output


@pytest.mark.slow
def test_past_the_deadline_the_stream_ends_with_a_503_event(tiny_model: Any, tmp_path: Path) -> None:
    # A deadline of 0 is already past when SIGTERM lands; any positive one races the tiny model,
    # which on an idle machine finishes its 2,000 tokens in under a second.
    proc, url = _start(tiny_model.gguf, tmp_path, shutdown_timeout_s=0)
    try:
        with (
            httpx.Client(timeout=60) as c,
            c.stream("POST", url + "/v1/chat/completions", json={**LONG, "stream": True}) as r,
        ):
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = _events(lines)
        assert rest[-1] == "[DONE]"
        assert json.loads(rest[-2])["error"]["code"] == "shutting_down"
    finally:
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "drain deadline passed" in output
