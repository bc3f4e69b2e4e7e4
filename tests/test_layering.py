"""Imports go one way: the tool-call core is pure, engines know nothing of tools or HTTP,
nothing below api/ imports FastAPI, and the server never imports the training module."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _has(mods: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in mods)


@pytest.mark.parametrize("module", ["server.toolcalls", "server.templates", "server.toolcalls.validation"])
def test_tool_call_core_is_pure(module: str) -> None:
    mods = _loaded_after(module)
    for heavy in (
        "fastapi",
        "starlette",
        "llama_cpp",
        "torch",
        "transformers",
        "training",
        "server.engines",
        "server.api",
        "prometheus_client",
    ):
        assert not _has(mods, heavy), f"{module} pulls in {heavy}"


@pytest.mark.parametrize(
    "module", ["server.chat", "server.constraints", "server.engines.llamacpp", "server.serving.build"]
)
def test_nothing_below_api_imports_fastapi(module: str) -> None:
    mods = _loaded_after(module)
    assert not _has(mods, "fastapi") and not _has(mods, "starlette")
    assert not _has(mods, "server.api")


def test_engines_know_nothing_of_tools_or_formats() -> None:
    mods = _loaded_after("server.engines.llamacpp")
    assert not _has(mods, "server.toolcalls") and not _has(mods, "server.chat")
    assert not _has(mods, "server.constraints")


def test_server_never_imports_training() -> None:
    mods = _loaded_after("server.api.app") | _loaded_after("server.__main__") | _loaded_after("server.serving.build")
    assert not _has(mods, "training")


def test_training_uses_the_servers_tool_call_core() -> None:
    assert _has(_loaded_after("training.evaluation.bfcl"), "server.types")
