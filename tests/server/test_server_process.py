"""`python -m server` as a user runs it: a real process, real flags, a real port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from server.config import load_settings
from tests.support.live import wait_healthy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_model_says_how_to_get_one(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        timeout=60,
    )
    assert out.returncode == 2
    assert "init-tiny" in out.stderr and "--model" in out.stderr


def test_serves_with_flags_and_shuts_down_cleanly(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    config = tmp_path / "callgate.yaml"
    config.write_text("limits:\n  default_max_tokens: 7\nmodel:\n  served_name: from-yaml\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--config",
            str(config),
            "--model",
            str(tiny_model.gguf),
            "--served-model-name",
            "demo",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["demo"]  # the flag beats the YAML
        r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], seed=1)
        assert r.usage.completion_tokens <= 7  # the YAML's default_max_tokens applies
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    # uvicorn finishes in-flight work, then re-raises the signal it caught (hence -SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "serving demo: format=hermes" in output


def test_settings_precedence_yaml_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("limits:\n  max_queue: 3\n  max_tools: 9\nserver:\n  port: 9000\n")
    monkeypatch.setenv("CALLGATE_LIMITS__MAX_QUEUE", "5")
    settings = load_settings(config, **{"server.port": 9100})
    assert (settings.limits.max_queue, settings.limits.max_tools, settings.server.port) == (5, 9, 9100)


def test_unsafe_settings_are_refused(tmp_path: Path) -> None:
    from server.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text("limits:\n  max_tokens: 9000\nmodel:\n  context_length: 4096\n")
    with pytest.raises(ConfigError, match="context_length"):
        load_settings(config)
