"""A real Prometheus (Debian's `prometheus`) scrapes a live gateway every second; what its HTTP
API answers must equal what was sent. Skipped only when the binary is not installed (.ci/run
installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.live import WEATHER, Live, live_gateway

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed: apt-get install prometheus")
USER = [{"role": "user", "content": "weather in Paris?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scraped(tiny_model: Any) -> Iterator[Live]:
    yield from live_gateway(tiny_model.gguf, **{"model.served_name": "tiny"})


@pytest.fixture(scope="module")
def prometheus(scraped: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    target = scraped.base_url.removeprefix("http://")
    (folder / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: callgate\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = _free_port()
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_ready(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("prometheus did not become ready")


def _query(url: str, promql: str) -> float | None:
    data = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5).json()["data"]["result"]
    return float(data[0]["value"][1]) if data else None


def _eventually(url: str, promql: str, expected: float, timeout: float = 20.0) -> None:
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        seen = _query(url, promql)
        if seen == expected:
            return
        time.sleep(0.5)
    pytest.fail(f"{promql} = {seen}, expected {expected}")


def test_prometheus_sees_what_was_sent(scraped: Live, prometheus: str) -> None:
    _eventually(prometheus, 'up{job="callgate"}', 1.0)
    chat = scraped.v1 + "/chat/completions"
    for seed in range(3):  # required: one or more calls each, or a truncated one
        body = {
            "model": "tiny",
            "messages": USER,
            "tools": [WEATHER],
            "tool_choice": "required",
            "max_tokens": 60,
            "seed": seed,
        }
        assert httpx.post(chat, json=body, timeout=60).status_code == 200
    for seed in range(2):  # none: text, counted once each as no_tool
        body = {
            "model": "tiny",
            "messages": USER,
            "tools": [WEATHER],
            "tool_choice": "none",
            "max_tokens": 8,
            "seed": seed,
        }
        assert httpx.post(chat, json=body, timeout=60).status_code == 200
    assert httpx.post(chat, json={"model": "tiny", "messages": []}, timeout=60).status_code == 400

    sent_outcomes = sum(
        s.value
        for metric in scraped.metrics.registry.collect()
        for s in metric.samples
        if s.name == "callgate_tool_calls_total"
    )
    assert sent_outcomes >= 5
    _eventually(prometheus, "sum(callgate_tool_calls_total)", sent_outcomes)
    _eventually(prometheus, 'sum(callgate_tool_calls_total{mode="none",outcome="no_tool"})', 2.0)
    _eventually(prometheus, 'sum(callgate_request_duration_seconds_count{status="200"})', 5.0)
    _eventually(prometheus, 'sum(callgate_request_duration_seconds_count{status="400"})', 1.0)
    # One lookup a request (a second only when the no-tool threshold settles the mode).
    _eventually(prometheus, "sum(callgate_constraint_cache_total)", 5.0)
    _eventually(prometheus, 'callgate_queue_depth{model="tiny"}', 0.0)
    assert (_query(prometheus, "sum(callgate_completion_tokens_total)") or 0) > 0
    assert _query(prometheus, "sum(callgate_engine_errors_total)") in (None, 0.0)
