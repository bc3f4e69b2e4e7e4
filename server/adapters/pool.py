"""Which adapters one engine holds: at most `max_loaded`, least recently used evicted first,
pinned ones never, and never one that a request is using (leases count them).

A request takes a lease before it queues for the engine; the lease loads the adapter if
needed, sharing a load already under way, and evicts an idle one to make room. Loads run as
the engine's own coroutines, so waiting for one stalls nobody else. Knows nothing of
manifests, folders or HTTP: it sees AdapterFiles and the Engine seam.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from functools import partial
from typing import Literal

from server.engines.base import AdapterFiles, Engine
from server.errors import EngineError, GatewayError, NotFound, Timeout

State = Literal["loading", "loaded", "unloading"]
_log = logging.getLogger("callgate")


class AdapterCapacity(GatewayError):
    """Every adapter slot is held by a pinned adapter: no load can ever make room."""

    status = 503
    type = "server_error"
    code = "adapter_capacity"


class AdapterLoadFailed(EngineError):
    code = "adapter_load_failed"


class AdapterPool:
    """All state changes happen between awaits on the event loop, so they need no lock; a
    waiter takes the current `_changed` event before it awaits, and every change sets it."""

    def __init__(self, engine: Engine, max_loaded: int, pinned: Collection[str] = (), wait_s: float = 60.0):
        self.engine = engine
        self.max_loaded = max_loaded
        self.pinned = set(pinned)
        self.wait_s = wait_s  # longest wait for a slot held by busy adapters; then 504
        self._current: dict[str, AdapterFiles] = {}  # what each served name loads now
        self._state: dict[str, State] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # loaded names, least recently used first
        self._refs: Counter[str] = Counter()
        self._draining: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # --- what the registry says is served ---

    def serve(self, files: AdapterFiles) -> None:
        self._current[files.name] = files

    def forget(self, name: str) -> None:
        self._current.pop(name, None)
        self._notify()  # requests waiting for it give up (404)

    def is_loaded(self, name: str) -> bool:
        return self._state.get(name) == "loaded"

    def refs(self, name: str) -> int:
        return self._refs[name]

    # --- requests ---

    @asynccontextmanager
    async def lease(self, files: AdapterFiles) -> AsyncIterator[None]:
        """Hold `files.name` loaded in the engine for the body of the `async with`."""
        await self._acquire(files)
        try:
            yield
        finally:
            self._release(files.name)  # no await here: a cancelled task still gives its lease back

    def _release(self, name: str) -> None:
        self._refs[name] -= 1
        self._notify()

    def _release_if_loaded(self, name: str, load: asyncio.Task[None]) -> None:
        """The reference a load took for a request that left while it ran."""
        if not load.cancelled() and load.exception() is None:
            self._release(name)

    async def _acquire(self, files: AdapterFiles) -> None:
        name, deadline = files.name, time.monotonic() + self.wait_s
        while True:
            if self._current.get(name) != files:
                raise NotFound(f"adapter {name!r} was unloaded", param="model")
            state = self._state.get(name)
            if state == "loaded" and name not in self._draining:
                self._refs[name] += 1
                self._lru.move_to_end(name)
                return
            task = self._start_load(files) if state is None and name not in self._draining else None
            if task is None:
                await self._wait(deadline)
                continue
            try:
                await asyncio.shield(task)  # a client that leaves does not abandon the load half-way
            except asyncio.CancelledError:
                task.add_done_callback(partial(self._release_if_loaded, name))
                raise
            return  # the load took this request's reference, so nobody evicts it first

    def _start_load(self, files: AdapterFiles) -> asyncio.Task[None] | None:
        """Start loading (evicting an idle adapter if full), or None when the caller must wait."""
        victim = None
        if len(self._state) >= self.max_loaded:
            victim = self._victim()
            if victim is None:
                return None
            self._state[victim] = "unloading"
            del self._lru[victim]
        self._state[files.name] = "loading"
        task = asyncio.create_task(self._load(files, victim))
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: the request that started it may have left

    def _victim(self) -> str | None:
        for name in self._lru:  # least recently used first
            if not self._refs[name] and name not in self.pinned and name not in self._draining:
                return name
        if all(name in self.pinned for name in self._state):
            raise AdapterCapacity(
                f"all {self.max_loaded} adapter slots (adapters.max_loaded) hold pinned adapters "
                f"({', '.join(sorted(self._state))}); raise adapters.max_loaded or unpin one (adapters.pinned)"
            )
        return None

    async def _load(self, files: AdapterFiles, victim: str | None) -> None:
        if victim is not None:
            await self._unload(victim)
        try:
            await self.engine.load_adapter(files)
        except Exception as exc:
            del self._state[files.name]
            self._notify()
            raise AdapterLoadFailed(f"adapter {files.name!r} could not be loaded: {exc}") from exc
        self._state[files.name] = "loaded"
        self._lru[files.name] = None
        self._refs[files.name] += 1  # the starting request's
        self._notify()
        _log.info("adapter %s loaded%s", files.name, f" (evicted {victim})" if victim else "")

    async def _unload(self, name: str) -> None:
        """`name` is marked "unloading" by the caller; the engine frees it, then the slot is free."""
        try:
            await self.engine.unload_adapter(name)
        except Exception:  # the engine keeps no usable state for it either way; log and go on
            _log.exception("unloading adapter %s failed", name)
        del self._state[name]
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, deadline: float) -> None:
        """Wait for any change of state, until the deadline (then 504)."""
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise Timeout(
                f"waited {self.wait_s:g}s for an adapter slot: all {self.max_loaded} loaded adapters were "
                "in use (adapters.max_loaded)"
            ) from None

    # --- the admin side ---

    async def drain(self, name: str) -> None:
        """Hold new requests for `name` back, let those using it finish, then unload it."""
        self._draining.add(name)
        try:
            while self._refs[name] or self._state.get(name) in ("loading", "unloading"):
                changed = self._changed
                await changed.wait()
            loaded = self._state.get(name) == "loaded"
            if loaded:
                self._state[name] = "unloading"  # from here others wait on this state
                del self._lru[name]
        finally:
            self._draining.discard(name)
            self._notify()
        if loaded:
            await self._unload(name)
            _log.info("adapter %s unloaded", name)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
