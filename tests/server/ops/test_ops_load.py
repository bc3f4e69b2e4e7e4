"""The load bench, reduced: 32 concurrent clients for ~10 s against a real `python -m server`:
nothing but 200 and 429, and the gateway's memory stays flat."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.bench_load import HEADER, run_level, start_gateway


@pytest.mark.slow
def test_load_32_clients_only_429_and_flat_memory(tiny_model: Any) -> None:
    proc, url = start_gateway(tiny_model.gguf)
    try:
        asyncio.run(run_level(url, proc.pid, 8, 3.0))  # warm-up: caches and allocator arenas fill
        level = asyncio.run(run_level(url, proc.pid, 32, 10.0))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\n{HEADER}\n{level.row()}")
    assert level.unexpected == 0, level.statuses
    assert level.statuses["200"] > 0 and level.held > 8  # it queued for real
    assert level.rss_after_mb - level.rss_before_mb < 40, "gateway memory grew under load"
