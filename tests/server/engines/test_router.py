"""The replica router's decisions, with typed fake replicas (the router's seam is the Engine
Protocol plus health(); real upstreams are in test_router_failover.py): least outstanding
requests, adapter affinity, retry only before the first piece, the circuit breaker, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from server.engines.base import AdapterFiles, Cancel, EngineInfo, Event, Finish, GenerateRequest, Piece
from server.engines.remote import CONNECT, DISCONNECT, NOT_FOUND, REJECTED, Health, Unavailable, UpstreamError
from server.engines.router import Router, RouterPolicy
from server.errors import EngineError, InvalidRequest
from server.metrics import Metrics
from server.types import Sampling

INFO = EngineInfo("fake", 1024, None, "", "")


@dataclass
class FakeReplica:
    name: str
    parallelism: int = 4
    fail: list[str] = field(default_factory=list)  # kinds to raise before the first piece, one per request
    fail_after_piece: bool = False
    gate: asyncio.Event | None = None  # generation waits for it: keeps requests outstanding
    healthy: bool = True
    served: list[GenerateRequest] = field(default_factory=list)
    adapters: set[str] = field(default_factory=set)
    load_fail: list[Exception] = field(default_factory=list)  # raised by load_adapter, one per load

    def info(self) -> EngineInfo:
        return INFO

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        self.served.append(request)
        if self.fail:
            raise UpstreamError("scripted", replica=self.name, kind=self.fail.pop(0))
        if request.adapter is not None and request.adapter not in self.adapters:
            raise UpstreamError("no such model", replica=self.name, kind=NOT_FOUND)
        if self.gate is not None:
            await self.gate.wait()
        yield Piece(self.name)
        if self.fail_after_piece:
            raise UpstreamError("connection broke", replica=self.name, kind=DISCONNECT)
        yield Finish("stop", 1, 1)

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        if self.fail:
            raise UpstreamError("scripted", replica=self.name, kind=self.fail.pop(0))
        return [0.5 for _ in candidates]

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        if self.load_fail:
            raise self.load_fail.pop(0)
        self.adapters.add(adapter.name)

    async def unload_adapter(self, name: str) -> None:
        self.adapters.discard(name)

    async def health(self) -> Health:
        return Health(self.healthy, load=None)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def request(adapter: str | None = None) -> GenerateRequest:
    return GenerateRequest("hi", Sampling(max_tokens=4), adapter=adapter)


async def answer(router: Router, adapter: str | None = None) -> str:
    async def collect() -> list[Event]:
        return [e async for e in router.generate(request(adapter), Cancel())]

    events = await asyncio.wait_for(collect(), 5)  # a routing mistake hangs on a gate: fail instead
    return "".join(e.text for e in events if isinstance(e, Piece))


def make(*replicas: FakeReplica, **policy: float) -> tuple[Router, Metrics]:
    metrics = Metrics()
    return Router(list(replicas), RouterPolicy(**policy), metrics), metrics  # type: ignore[arg-type]


def gauge(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return -1.0 if value is None else value


async def test_least_outstanding_requests_wins() -> None:
    a, b = FakeReplica("a", gate=asyncio.Event()), FakeReplica("b", gate=asyncio.Event())
    router, metrics = make(a, b)
    held = [asyncio.create_task(answer(router)) for _ in range(4)]
    await asyncio.sleep(0.01)
    assert (len(a.served), len(b.served)) == (2, 2)  # equal load: they take turns
    assert gauge(metrics, "callgate_replica_outstanding_requests", replica="a") == 2
    assert b.gate is not None
    b.gate.set()
    await asyncio.sleep(0.01)
    assert await answer(router) == "b" and await answer(router) == "b"  # a still holds 2
    assert a.gate is not None
    a.gate.set()
    assert sorted(await asyncio.gather(*held)) == ["a", "a", "b", "b"]
    assert router.parallelism == 8


async def test_adapter_affinity_prefers_replicas_holding_it_and_loads_on_demand() -> None:
    a, b = FakeReplica("a", gate=asyncio.Event()), FakeReplica("b")
    router, _ = make(a, b)
    b.healthy = False
    await router.check_health()
    await router.load_adapter(AdapterFiles("weather", Path("/adapters/weather")))
    assert a.adapters == {"weather"} and b.adapters == set()  # b was down: not loaded there
    b.healthy = True
    await router.check_health()
    busy = asyncio.create_task(answer(router, "weather"))  # a holds it: a, though both are idle
    await asyncio.sleep(0.01)
    assert [r.adapter for r in a.served] == ["weather"]
    assert await answer(router) == "b"  # no adapter: the least loaded
    # a is busier, but holds the adapter: affinity wins over one request's difference...
    second = asyncio.create_task(answer(router, "weather"))
    await asyncio.sleep(0.01)
    assert len(a.served) == 2
    assert a.gate is not None
    a.gate.set()
    await asyncio.gather(busy, second)
    # ...and when a is out, b gets the adapter loaded on demand and serves it.
    a.healthy = False
    await router.check_health()
    assert await answer(router, "weather") == "b" and "weather" in b.adapters
    await router.unload_adapter("weather")
    assert a.adapters == b.adapters == set()


async def test_a_replica_that_lost_its_adapters_gets_them_back() -> None:
    a = FakeReplica("a")
    router, metrics = make(a)
    await router.load_adapter(AdapterFiles("weather", Path("/adapters/weather")))
    a.adapters.clear()  # restarted: runtime-loaded adapters are gone, answers 404
    assert await answer(router, "weather") == "a"
    assert gauge(metrics, "callgate_upstream_errors_total", replica="a", kind="not_found") == 1


async def test_failure_before_the_first_piece_goes_to_another_replica() -> None:
    a, b = FakeReplica("a", fail=[CONNECT]), FakeReplica("b")
    router, metrics = make(a, b)
    answers = [await answer(router) for _ in range(4)]  # none fails, though a refused one
    assert gauge(metrics, "callgate_upstream_errors_total", replica="a", kind="connect") == 1
    assert len(a.served) + len(b.served) == 5 and answers.count("b") >= 2


async def test_no_retry_once_a_piece_was_sent() -> None:
    a, b = FakeReplica("a", fail_after_piece=True, healthy=False), FakeReplica("b", gate=asyncio.Event())
    router, _ = make(a, b)
    await router.check_health()
    blocker = asyncio.create_task(answer(router))  # b busy, so the next goes to a
    await asyncio.sleep(0.01)
    a.healthy = True
    await router.check_health()
    got: list[Event] = []
    with pytest.raises(UpstreamError) as caught:
        async for event in router.generate(request(), Cancel()):
            got.append(event)
    assert caught.value.kind == DISCONNECT and got == [Piece("a")]
    assert len(b.served) == 1  # only the blocker: the broken answer was not replayed
    assert b.gate is not None
    b.gate.set()
    await blocker


async def test_a_request_the_replica_rejects_is_not_retried() -> None:
    a, b = FakeReplica("a", fail=[REJECTED, REJECTED]), FakeReplica("b", fail=[REJECTED, REJECTED])
    router, _ = make(a, b)
    with pytest.raises(UpstreamError) as caught:
        await answer(router)
    assert caught.value.kind == REJECTED and len(a.served) + len(b.served) == 1


async def test_breaker_opens_after_consecutive_failures_then_probes_once() -> None:
    a, b = FakeReplica("a", fail=[CONNECT] * 3), FakeReplica("b")
    router, metrics = make(a, b, breaker_failures=3, breaker_open_s=0.2, retries=1)
    for _ in range(6):
        assert await answer(router) == "b"
    assert len(a.served) == 3  # then the breaker kept requests away from a
    assert gauge(metrics, "callgate_replica_healthy", replica="a") == 0
    await asyncio.sleep(0.25)  # half-open: the next request to a is the probe
    a.gate, b.healthy = asyncio.Event(), False
    await router.check_health()
    probe = asyncio.create_task(answer(router))
    await asyncio.sleep(0.01)
    assert len(a.served) == 4
    b.healthy = True
    await router.check_health()
    others = [await answer(router) for _ in range(2)]  # while the probe runs, a takes nothing else
    assert others == ["b", "b"]
    a.gate.set()
    assert await probe == "a"
    await router.check_health()
    assert gauge(metrics, "callgate_replica_healthy", replica="a") == 1  # closed again


async def test_unhealthy_replicas_are_skipped_and_none_left_is_a_503() -> None:
    a, b = FakeReplica("a"), FakeReplica("b")
    router, metrics = make(a, b)
    a.healthy = False
    await router.check_health()
    assert gauge(metrics, "callgate_replica_healthy", replica="a") == 0
    assert {await answer(router) for _ in range(3)} == {"b"}
    b.healthy = False
    await router.check_health()
    with pytest.raises(Unavailable, match="no upstream replica") as caught:
        await answer(router)
    assert caught.value.status == 503


async def test_every_replica_failing_raises_the_last_failure() -> None:
    a, b = FakeReplica("a", fail=[CONNECT]), FakeReplica("b", fail=[CONNECT])
    router, _ = make(a, b, retries=3)
    with pytest.raises(UpstreamError) as caught:
        await answer(router)
    assert caught.value.kind == CONNECT
    assert len(a.served) == len(b.served) == 1  # each tried once, never twice for one request


async def test_a_request_fault_does_not_count_against_the_replica() -> None:
    a = FakeReplica("a", fail=[CONNECT, CONNECT])
    router, _ = make(a, breaker_failures=3, retries=0)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await answer(router)

    async def too_long(request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        raise InvalidRequest("prompt too long", code="context_length_exceeded")
        yield Piece("")  # an async generator, as engines are

    a.generate = too_long  # type: ignore[method-assign]
    with pytest.raises(InvalidRequest):
        await answer(router)
    assert router.members[0].failures == 0  # it answered: the two connect failures are forgiven


async def test_probabilities_fail_over_too() -> None:
    a, b = FakeReplica("a", fail=[CONNECT]), FakeReplica("b")
    router, _ = make(a, b)
    assert await router.token_probabilities("hi", ["x"]) == [0.5]
    assert await router.token_probabilities("hi", ["x"]) == [0.5]


async def test_health_loop_runs_in_the_background_and_stops_on_close() -> None:
    a = FakeReplica("a")
    router, metrics = make(a, health_interval_s=0.02)
    await router.start()
    a.healthy = False
    await asyncio.sleep(0.1)
    assert gauge(metrics, "callgate_replica_healthy", replica="a") == 0
    await router.close()
    assert router._health_task is not None and router._health_task.done()


def test_remote_engines_know_nothing_of_tools_or_http_routes() -> None:
    import subprocess
    import sys

    code = (
        "import sys, server.engines.vllm, server.engines.llamaserver, server.engines.router; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    for banned in ("server.toolcalls", "server.constraints", "server.chat", "server.api", "fastapi", "training"):
        assert not any(m == banned or m.startswith(banned + ".") for m in mods), banned


@pytest.mark.parametrize(
    "error",
    [UpstreamError("refused", replica="a", kind=CONNECT), EngineError("llama-server was not started with this LoRA")],
)
async def test_a_failed_adapter_load_fails_over_to_another_replica(error: Exception) -> None:
    # Loading is part of the failover: a replica that cannot load the adapter is skipped.
    a, b = FakeReplica("a", load_fail=[error]), FakeReplica("b")
    router, _ = make(a, b)
    router._adapters["weather"] = AdapterFiles("weather", Path("/adapters/weather"))
    assert await answer(router, "weather") == "b"  # a, first in turn, could not load it
    assert "weather" in b.adapters and "weather" not in a.adapters and not router.members[0].probing


async def test_a_half_open_replica_whose_load_fails_is_probed_again() -> None:
    a, b = FakeReplica("a", fail=[CONNECT]), FakeReplica("b")
    router, _ = make(a, b, breaker_failures=1, breaker_open_s=0.05, retries=1)
    router._adapters["weather"] = AdapterFiles("weather", Path("/adapters/weather"))
    assert await answer(router) == "b"  # a failed once: its breaker opens
    await asyncio.sleep(0.06)  # half-open: the next request to a is its probe
    b.healthy = False
    await router.check_health()
    a.load_fail.append(EngineError("cannot load"))
    with pytest.raises(EngineError):
        await answer(router, "weather")  # the probe's load failed, with no replica left
    member = router.members[0]
    assert not member.probing  # not stuck half-open: the next request probes again
    assert await answer(router, "weather") == "a"
