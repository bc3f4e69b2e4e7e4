"""Admission to an engine: as many running requests as the engine really runs in parallel,
a bounded queue behind them (429 past it) and a deadline for waiting (504 past it).
A request that leaves (client gone) frees its place at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from server.errors import Overloaded, Timeout


class Admission:
    def __init__(
        self,
        slots: int,
        max_queue: int,
        timeout_s: float,
        on_change: Callable[[int, int], None] = lambda waiting, running: None,
    ):
        self._slots = asyncio.Semaphore(slots)
        self._max_queue = max_queue
        self._timeout_s = timeout_s
        self._on_change = on_change
        self.waiting = 0
        self.running = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a running slot; yields the seconds spent waiting for it."""
        if self.waiting >= self._max_queue:
            raise Overloaded(
                f"the model's queue is full ({self._max_queue} waiting); retry shortly",
                retry_after=1.0,
            )
        waited = await self._acquire()
        self.running += 1
        self._report()
        try:
            yield waited
        finally:
            self.running -= 1
            self._slots.release()
            self._report()

    async def _acquire(self) -> float:
        start = time.perf_counter()
        self.waiting += 1
        self._report()
        try:
            await asyncio.wait_for(self._slots.acquire(), self._timeout_s)
        except TimeoutError:
            raise Timeout(f"waited {self._timeout_s:g}s in the queue without a free slot") from None
        finally:
            self.waiting -= 1
            self._report()  # a waiter that left or timed out is no longer queued
        return time.perf_counter() - start

    def _report(self) -> None:
        self._on_change(self.waiting, self.running)
