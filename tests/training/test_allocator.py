"""training.allocator: with freed memory kept, a large block allocated again faults no page in."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

PROBE = """
import json, resource, sys
from training.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults_of_a_64mb_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(64 << 20)  # zero-filled: every page touched
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_64mb_block()
print(json.dumps({"kept": kept, "faults": faults_of_a_64mb_block()}))
"""


def _probe(mode: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    probe: dict[str, Any] = json.loads(out.stdout)
    return probe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_page_faults() -> None:
    default, kept = _probe("default"), _probe("keep")
    assert kept["kept"] is True
    # 64 MB is 16,384 pages: glibc maps and unmaps it every time by default, never once kept
    assert default["faults"] > 10_000
    assert kept["faults"] < 1_000
