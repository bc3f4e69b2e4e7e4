"""Real upstream servers on loopback for the remote-engine and router tests: llama.cpp's C++
llama-server (built by `make llama-server` into .cache/llama-server/) and llama-cpp-python's
OpenAI server, which shares vLLM's `/v1/completions` protocol. Each runs as a subprocess that
the test can kill (SIGKILL) like a crashed replica."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LLAMA_SERVER = Path(os.environ.get("CALLGATE_LLAMA_SERVER", ROOT / ".cache" / "llama-server" / "llama-server"))


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL, as a crashed replica: no goodbye to open connections."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_llama_server() -> Path:
    if not LLAMA_SERVER.is_file():
        pytest.skip(f"llama-server is not built at {LLAMA_SERVER} (`make llama-server` builds it, ~9 min)")
    return LLAMA_SERVER


@contextmanager
def llama_server(
    gguf: Path, log_dir: Path, *, slots: int = 2, ctx: int = 2048, extra: tuple[str, ...] = ()
) -> Iterator[Server]:
    binary = need_llama_server()
    port = free_port()
    args = [
        str(binary),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(ctx),
        "-np",
        str(slots),
        "-t",
        "1",
        "--no-webui",
        "--metrics",
        *extra,
    ]
    with _running(args, f"http://127.0.0.1:{port}", "/health", log_dir / f"llama-server-{port}.log") as server:
        yield server


@contextmanager
def llama_cpp_python_server(gguf: Path, log_dir: Path, *, ctx: int = 2048) -> Iterator[Server]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(ctx),
        "--n_threads",
        "1",
    ]
    with _running(args, f"http://127.0.0.1:{port}", "/v1/models", log_dir / f"llama-cpp-python-{port}.log") as s:
        yield s


@contextmanager
def _running(args: list[str], url: str, ready_path: str, log: Path) -> Iterator[Server]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url, process, log)
    try:
        _wait_ready(server, ready_path)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(server: Server, path: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"upstream exited ({server.process.returncode}): {server.log_tail()}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"upstream at {server.url} not ready after {timeout_s}s: {server.log_tail()}")
