"""Shared bench helpers: the machine and versions block, percentiles, and writing one
section of docs/benchmarks.md (each bench owns the section under its own heading)."""

from __future__ import annotations

import platform
import re
import signal
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the bench script named in it; rerun it to refresh.\n"


def exit_on_sigterm() -> None:
    """SIGTERM exits through SystemExit, so the `with` blocks that started gateways and
    llama-servers stop them instead of leaving them running (the default kills only this process)."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def versions(*packages: str) -> str:
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_section(title: str, body: str, packages: tuple[str, ...]) -> None:
    """Replace (or append) the `## title` section of docs/benchmarks.md."""
    command = "python " + " ".join(sys.argv)
    section = (
        f"## {title}\n\n- machine: {machine()}\n- versions: {versions(*packages)}\n"
        f"- commit: {commit()}\n- command: `{command}`\n\n{body.strip()}\n"
    )
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text)
