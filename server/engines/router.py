"""Replicas of one model behind one Engine. Each request goes to the replica with the fewest
outstanding requests (its own count, or the upstream's reported load when higher), preferring
replicas that already hold the request's adapter. A replica that fails before the first token
is left for another one (a request is never retried after it began to stream); a circuit
breaker per replica stops sending to one that keeps failing, and a background health check
takes replicas out and back in. Replicas are engines that can also report their health (vLLM,
llama-server); the router knows nothing of their protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from server.engines.base import AdapterFiles, Cancel, Engine, EngineInfo, Event, GenerateRequest
from server.engines.remote import NOT_FOUND, OVERLOADED, STATUS, Health, Unavailable, UpstreamError
from server.errors import EngineError, GatewayError
from server.metrics import Metrics

log = logging.getLogger("callgate.router")
T = TypeVar("T")


class Replica(Engine, Protocol):
    name: str
    parallelism: int

    async def health(self) -> Health: ...


@dataclass(frozen=True)
class RouterPolicy:
    health_interval_s: float = 2.0
    breaker_failures: int = 3  # consecutive failures that open a replica's breaker
    breaker_open_s: float = 10.0  # then, after this long, one request probes it (half-open)
    retries: int = 2  # other replicas tried when one fails before the first token


@dataclass
class Member:
    """A replica and what the router knows of it."""

    engine: Replica
    index: int
    healthy: bool = True
    outstanding: int = 0
    reported_load: float | None = None
    failures: int = 0  # consecutive
    open_until: float = 0.0
    probing: bool = False  # half-open: one request in flight decides
    adapters: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.engine.name

    def score(self) -> float:
        return max(float(self.outstanding), self.reported_load or 0.0)


class Router:
    def __init__(
        self, replicas: Sequence[Replica], policy: RouterPolicy = RouterPolicy(), metrics: Metrics | None = None
    ):
        if not replicas:
            raise ValueError("a router needs at least one replica")
        self.policy = policy
        self.members = [Member(engine, i) for i, engine in enumerate(replicas)]
        self.parallelism = sum(r.parallelism for r in replicas)
        self._metrics = metrics or Metrics()
        self._adapters: dict[str, AdapterFiles] = {}
        self._turn = itertools.count()
        self._health_task: asyncio.Task[None] | None = None
        for member in self.members:
            self._report(member)

    def info(self) -> EngineInfo:
        return self.members[0].engine.info()

    async def start(self) -> None:
        """Begin the background health checks (called once the event loop runs)."""
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        tried: set[int] = set()
        last: UpstreamError | None = None
        for attempt in range(self.policy.retries + 1):
            member = await self._next(request.adapter, tried, last)
            failed = await self._ready(member, request.adapter, attempt)
            if failed is not None:
                tried.add(member.index)
                last = failed
                continue
            started = False
            member.outstanding += 1
            self._report(member)
            events = member.engine.generate(request, cancel)
            try:
                async for event in events:
                    started = True
                    yield event
            except UpstreamError as exc:
                self._failed(member, exc)
                if started or not (exc.replica_fault or exc.kind == NOT_FOUND) or attempt == self.policy.retries:
                    raise
                log.warning("replica %s failed before the first token (%s); trying another", member.name, exc.kind)
                if exc.kind != NOT_FOUND:  # a lost adapter is loaded again there: the same replica may do
                    tried.add(member.index)
                last = exc
                continue
            except GatewayError:
                self._succeeded(member)  # it answered: the request was at fault (e.g. too long)
                raise
            finally:
                member.outstanding -= 1
                member.probing = False  # a probe that was cancelled leaves the breaker half-open
                self._report(member)
                await _close(events)  # at once, not when collected: frees the upstream connection
            self._succeeded(member)
            return

    async def _next(self, adapter: str | None, tried: set[int], last: UpstreamError | None) -> Member:
        """The replica for the next attempt; when failures used them all up, the last failure."""
        try:
            return await self._pick(adapter, tried)
        except Unavailable:
            if last is not None:
                raise last from None
            raise

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        return await self._call(
            adapter, lambda engine: engine.token_probabilities(prompt, candidates, adapter, adapter_scale)
        )

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        """Load on every replica that answers; the others get it when a request needs it there."""
        self._adapters[adapter.name] = adapter
        live = [m for m in self.members if self._available(m, time.monotonic())] or self.members
        results = await asyncio.gather(*(self._load_on(m, adapter.name) for m in live), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            del self._adapters[adapter.name]
            raise errors[0]

    async def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)
        holders = [m for m in self.members if name in m.adapters]
        for member in holders:
            member.adapters.discard(name)
        await asyncio.gather(*(m.engine.unload_adapter(name) for m in holders), return_exceptions=True)

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for member in self.members:
            await member.engine.close()

    # -- choosing a replica ----------------------------------------------------------------

    async def _pick(self, adapter: str | None, tried: set[int]) -> Member:
        return self._choose(adapter, tried)

    async def _ready(self, member: Member, adapter: str | None, attempt: int) -> UpstreamError | None:
        """Load the request's adapter on `member` if it lacks it. A failure there is part of the
        failover: returned (try another replica) while attempts remain, else raised. Whatever
        happens, a half-open member's probe ends here unless the load succeeded."""
        if adapter is None or adapter in member.adapters:
            return None
        try:
            await self._load_on(member, adapter)
        except UpstreamError as exc:
            self._failed(member, exc)
            if not exc.replica_fault or attempt == self.policy.retries:
                raise
            log.warning("replica %s could not load adapter %s (%s); trying another", member.name, adapter, exc.kind)
            return exc
        except EngineError as exc:  # e.g. a llama-server started without this LoRA: others may have it
            member.probing = False
            if attempt == self.policy.retries:
                raise
            log.warning("replica %s could not load adapter %s (%s); trying another", member.name, adapter, exc)
            return UpstreamError(exc.message, replica=member.name, kind=STATUS)
        except BaseException:
            member.probing = False  # cancelled or a bug: never leave the breaker half-open for good
            raise
        return None

    def _choose(self, adapter: str | None, tried: set[int]) -> Member:
        now = time.monotonic()
        candidates = [m for m in self.members if m.index not in tried and self._available(m, now)]
        if not candidates:
            raise Unavailable(f"no upstream replica can take the request now: {self._summary(now)}")
        if adapter is not None:
            candidates = [m for m in candidates if adapter in m.adapters] or candidates
        turn = next(self._turn)  # among equal scores, take turns
        best = min(candidates, key=lambda m: (m.score(), (m.index - turn) % len(self.members)))
        if self._breaker(best, now) == "half_open":
            best.probing = True
        return best

    def _available(self, member: Member, now: float) -> bool:
        state = self._breaker(member, now)
        return member.healthy and (state == "closed" or (state == "half_open" and not member.probing))

    def _breaker(self, member: Member, now: float) -> str:
        if member.failures < self.policy.breaker_failures:
            return "closed"
        return "open" if now < member.open_until else "half_open"

    async def _call(self, adapter: str | None, call: Callable[[Replica], Awaitable[T]]) -> T:
        tried: set[int] = set()
        last: UpstreamError | None = None
        for attempt in range(self.policy.retries + 1):
            member = await self._next(adapter, tried, last)
            failed = await self._ready(member, adapter, attempt)
            if failed is not None:
                tried.add(member.index)
                last = failed
                continue
            member.outstanding += 1
            try:
                result = await call(member.engine)
            except UpstreamError as exc:
                self._failed(member, exc)
                if not exc.replica_fault or attempt == self.policy.retries:
                    raise
                tried.add(member.index)
                last = exc
                continue
            finally:
                member.outstanding -= 1
                member.probing = False
            self._succeeded(member)
            return result
        raise AssertionError("unreachable")

    async def _load_on(self, member: Member, name: str) -> None:
        files = self._adapters.get(name)
        if files is None:
            return  # not an adapter of this router: the engine answers for it
        await member.engine.load_adapter(files)
        member.adapters.add(name)

    # -- outcomes, health, metrics ---------------------------------------------------------

    def _failed(self, member: Member, exc: UpstreamError) -> None:
        member.probing = False
        self._metrics.upstream_errors.labels(member.name, exc.kind).inc()
        if exc.kind == NOT_FOUND:
            member.adapters.clear()  # restarted without them, most likely: reload on demand
            return
        if not exc.replica_fault or exc.kind == OVERLOADED:
            return  # the request's fault, or busy: no reason to stop sending to it
        member.failures += 1
        if member.failures >= self.policy.breaker_failures:
            member.open_until = time.monotonic() + self.policy.breaker_open_s
            log.warning(
                "replica %s: breaker open for %gs after %d failures (last: %s)",
                member.name,
                self.policy.breaker_open_s,
                member.failures,
                exc.message,
            )
        self._report(member)

    def _succeeded(self, member: Member) -> None:
        member.probing = False
        if member.failures:
            member.failures = 0
            self._report(member)

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.policy.health_interval_s)

    async def check_health(self) -> None:
        results = await asyncio.gather(*(m.engine.health() for m in self.members), return_exceptions=True)
        for member, result in zip(self.members, results, strict=True):
            health = result if isinstance(result, Health) else Health(False, detail=repr(result))
            if health.ok != member.healthy:
                log.warning(
                    "replica %s is %s%s",
                    member.name,
                    "healthy" if health.ok else "unhealthy",
                    f" ({health.detail})" if health.detail else "",
                )
            member.healthy = health.ok
            member.reported_load = health.load
            self._report(member)

    def _report(self, member: Member) -> None:
        up = member.healthy and self._breaker(member, time.monotonic()) != "open"
        self._metrics.replica_healthy.labels(member.name).set(1 if up else 0)
        self._metrics.replica_outstanding.labels(member.name).set(member.outstanding)

    def _summary(self, now: float) -> str:
        parts = []
        for m in self.members:
            state = "unhealthy" if not m.healthy else f"breaker {self._breaker(m, now)}"
            parts.append(f"replica {m.index} ({state})")  # not its URL: clients see this
        return ", ".join(parts)


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)  # async generators have it; other iterators need nothing
    if aclose is not None:
        await aclose()
