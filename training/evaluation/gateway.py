"""A real gateway for an evaluation: `python -m server` on a free loopback port, serving a GGUF and
the adapters of one folder, for as long as the `with` block runs. Scoring through it measures what
a client gets (the model's template, the grammar, the parser, validation), not what the model
writes on its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]  # where `server` is importable from


@contextmanager
def served_gateway(
    gguf: Path, adapters: Path, log: Path, *, threads: int | None = None, start_timeout_s: float = 300.0
) -> Iterator[str]:
    """Yields the gateway's base URL (".../v1"); the base model is served as "base", each adapter
    folder under its name. The gateway's output goes to `log`."""

    port = _free_port()
    settings = {
        "model": {"path": str(gguf), "served_name": "base", **({"threads": threads} if threads else {})},
        "adapters": {"dir": str(adapters)},
        "server": {"host": "127.0.0.1", "port": port},
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, log.open("wb") as out:
        config = Path(tmp) / "gateway.yaml"
        config.write_text(yaml.safe_dump(settings), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            _wait_healthy(f"http://127.0.0.1:{port}/health", process, log, start_timeout_s)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"the gateway exited with {process.returncode} at start:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the gateway did not answer {url} within {timeout_s:.0f} s (its output: {log})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
