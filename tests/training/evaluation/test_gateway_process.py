"""The gateway a served evaluation starts is a child process: stopping the training command with
SIGTERM (a scheduler, `timeout`, a cancelled job) must stop it too, not orphan it with its port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from training.demo.tiny import TinyModel

ROOT = Path(__file__).resolve().parents[3]

# What `python -m training` does before any command (exit_on_sigterm), then a served evaluation's
# gateway held open as build-demo holds it while it scores.
HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from training.__main__ import exit_on_sigterm
    from training.evaluation.gateway import served_gateway

    if sys.argv[1] == "on":
        exit_on_sigterm()
    gguf, adapters, log = map(Path, sys.argv[2:5])
    with served_gateway(gguf, adapters, log, threads=1) as url:
        print(url, flush=True)
        time.sleep(600)
    """
)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, its parent not yet reaped it
            return True
        time.sleep(0.2)
    return False


def _hold(mode: str, tiny_model: TinyModel, tmp_path: Path) -> tuple[subprocess.Popen[str], str, int]:
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, mode, str(tiny_model.gguf), str(adapters), str(tmp_path / "gateway.log")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), (url, (tmp_path / "gateway.log").read_text()[-2000:])
    assert httpx.get(url.removesuffix("/v1") + "/health", timeout=10).status_code == 200
    (child,) = _children(process.pid)
    return process, url, child


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_sigterm_stops_the_served_gateway(tiny_model: TinyModel, tmp_path: Path) -> None:
    process, url, gateway = _hold("on", tiny_model, tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert _gone(gateway, 10), "the gateway outlived the command that started it"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url.removesuffix("/v1") + "/health", timeout=5)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_without_the_handler_the_gateway_is_orphaned(tiny_model: TinyModel, tmp_path: Path) -> None:
    """The control: Python's default SIGTERM kills only the parent, which is why the handler exists."""
    process, _, gateway = _hold("off", tiny_model, tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == -signal.SIGTERM
        assert not _gone(gateway, 2)
    finally:
        os.kill(gateway, signal.SIGKILL)
