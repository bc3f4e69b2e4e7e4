"""The adapter pool (LRU, pinning, leases, loads that stall nobody) and the adapter registry
(folders, manifests, path checks, binding, persistence), on the typed fake engine."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from server.adapters.pool import AdapterCapacity, AdapterLoadFailed, AdapterPool
from server.adapters.registry import STATE_FILE, AdapterRefused, resolve_folder
from server.api.translate import to_chat_request
from server.api.wire import ChatCompletionRequest
from server.chat import ChatRequest, prompt_for, run_chat
from server.engines.base import AdapterFiles, Cancel
from server.errors import ConfigError, EngineError, InvalidRequest, NotFound, Timeout
from server.metrics import Metrics
from server.serving.build import build_registry
from server.serving.registry import ModelRegistry
from server.serving.served import Served
from server.toolcalls import get_format
from server.toolcalls.prompting import prompt_sha256
from server.types import ChoiceMode, Message, Sampling, Tool, ToolChoice
from tests.support.adapter_folders import MARKED_TEMPLATE, PLAIN_TEMPLATE, adapter_settings, base_file, make_adapter
from tests.support.fakes import FakeEngine

GOOD = '<tool_call>\n{"name": "track_order", "arguments": {"order_id": 7}}\n</tool_call>'
TOOL = Tool(
    "track_order", "", {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}
)


def _files(name: str) -> AdapterFiles:
    return AdapterFiles(name, Path("/nowhere") / name, Path("/nowhere") / name / "adapter.gguf")


def _pool(engine: FakeEngine, max_loaded: int = 2, pinned: tuple[str, ...] = (), *names: str) -> AdapterPool:
    pool = AdapterPool(engine, max_loaded, pinned, wait_s=2.0)
    for name in names or ("a", "b", "c"):
        pool.serve(_files(name))
    return pool


async def _use(pool: AdapterPool, name: str) -> None:
    async with pool.lease(_files(name)):
        pass


# --- the pool ---


async def test_least_recently_used_is_evicted_and_the_engine_never_holds_more() -> None:
    engine = FakeEngine()
    pool = _pool(engine, 2)
    for name in ("a", "b", "a", "c"):  # "a" used again, so "b" is the least recent when "c" comes
        await _use(pool, name)
    assert engine.loads == ["a", "b", "c"] and engine.unloads == ["b"]
    assert engine.loaded == {"a", "c"} and engine.most_loaded == 2
    await _use(pool, "b")  # now "a" is the least recent
    assert engine.unloads == ["b", "a"] and engine.loaded == {"b", "c"}


async def test_pinned_adapters_are_never_evicted() -> None:
    engine = FakeEngine()
    pool = _pool(engine, 2, ("a",))
    for name in ("a", "b", "c", "b", "c"):
        await _use(pool, name)
    assert "a" not in engine.unloads and "a" in engine.loaded
    assert engine.unloads == ["b", "c", "b"]


async def test_all_slots_pinned_is_a_503_that_names_the_settings() -> None:
    engine = FakeEngine()
    pool = _pool(engine, 1, ("a",))
    await _use(pool, "a")
    with pytest.raises(AdapterCapacity) as info:
        await _use(pool, "b")
    assert info.value.status == 503 and "adapters.max_loaded" in info.value.message


async def test_an_adapter_in_use_is_not_evicted_and_the_load_waits_for_it() -> None:
    engine = FakeEngine()
    pool = _pool(engine, 1)
    async with pool.lease(_files("a")):
        waiting = asyncio.create_task(_use(pool, "b"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and engine.unloads == [] and engine.loaded == {"a"}
    await asyncio.wait_for(waiting, 2)
    assert engine.unloads == ["a"] and engine.loaded == {"b"}


async def test_waiting_for_a_busy_slot_ends_in_a_504() -> None:
    engine = FakeEngine()
    pool = AdapterPool(engine, 1, wait_s=0.1)
    pool.serve(_files("a"))
    pool.serve(_files("b"))
    async with pool.lease(_files("a")):
        with pytest.raises(Timeout) as info:
            await _use(pool, "b")
    assert "adapters.max_loaded" in info.value.message and pool.refs("b") == 0


async def test_concurrent_requests_share_one_load() -> None:
    engine = FakeEngine(load_gate=asyncio.Event())
    pool = _pool(engine, 2)
    users = [asyncio.create_task(_use(pool, "a")) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert engine.loads == ["a"] and not any(u.done() for u in users)
    engine.load_gate.set()  # type: ignore[union-attr]
    await asyncio.wait_for(asyncio.gather(*users), 2)
    assert engine.loads == ["a"] and pool.refs("a") == 0


async def test_a_slow_load_does_not_stall_requests_to_a_loaded_adapter() -> None:
    engine = FakeEngine()
    pool = _pool(engine, 2)
    await _use(pool, "a")
    engine.load_gate = asyncio.Event()
    slow = asyncio.create_task(_use(pool, "b"))
    await asyncio.sleep(0.02)
    await asyncio.wait_for(_use(pool, "a"), 0.5)  # served while "b" is still loading
    assert not slow.done()
    engine.load_gate.set()
    await asyncio.wait_for(slow, 2)


async def test_a_failed_load_is_reported_cleaned_up_and_retried() -> None:
    engine = FakeEngine(broken={"a"})
    pool = _pool(engine, 2)
    with pytest.raises(AdapterLoadFailed) as info:
        await _use(pool, "a")
    assert isinstance(info.value, EngineError) and "not a GGUF LoRA" in info.value.message
    assert not pool.is_loaded("a")
    engine.broken.clear()
    await _use(pool, "a")
    assert engine.loads == ["a", "a"] and pool.is_loaded("a")


async def test_a_client_that_leaves_during_the_load_leaks_no_reference() -> None:
    engine = FakeEngine(load_gate=asyncio.Event())
    pool = _pool(engine, 1)
    leaving = asyncio.create_task(_use(pool, "a"))
    await asyncio.sleep(0.02)
    leaving.cancel()
    engine.load_gate.set()  # type: ignore[union-attr]
    await asyncio.gather(leaving, return_exceptions=True)
    await asyncio.sleep(0.02)
    assert pool.is_loaded("a") and pool.refs("a") == 0
    await _use(pool, "b")  # "a" is evictable: nobody holds it
    assert engine.unloads == ["a"]


async def test_drain_waits_for_requests_in_flight_then_unloads() -> None:
    engine = FakeEngine()
    pool = _pool(engine, 2)
    async with pool.lease(_files("a")):
        pool.forget("a")
        drain = asyncio.create_task(pool.drain("a"))
        await asyncio.sleep(0.05)
        assert not drain.done() and engine.unloads == []
        with pytest.raises(NotFound):  # new requests for a forgotten adapter are refused
            await _use(pool, "a")
    await asyncio.wait_for(drain, 2)
    assert engine.unloads == ["a"] and not pool.is_loaded("a")


# --- folders and manifests ---


def test_lora_path_must_resolve_inside_the_adapters_folder(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    folder = make_adapter(root, "good")
    assert resolve_folder(root, "good", "good") == folder.resolve()
    assert resolve_folder(root, str(folder), "good") == folder.resolve()
    assert resolve_folder(root, str(root / "x" / ".." / "good"), "good") == folder.resolve()
    outside = make_adapter(tmp_path / "elsewhere", "evil")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    for path, name in [
        (str(outside), "evil"),
        ("../elsewhere/evil", "evil"),
        (str(root / "linked"), "linked"),
        (str(root), "adapters"),
        ("/etc", "etc"),
        (str(root / "good" / "sub"), "sub"),
    ]:
        with pytest.raises(AdapterRefused) as info:
            resolve_folder(root, path, name)
        assert info.value.status == 400 and info.value.param == "lora_path", path
    with pytest.raises(AdapterRefused, match="folder 'good' but lora_name is 'other'"):
        resolve_folder(root, "good", "other")
    with pytest.raises(InvalidRequest, match="must be provided"):
        resolve_folder(root, "", "good")


def _registry(
    tmp_path: Path, engine: FakeEngine | None = None, flags: dict[str, object] | None = None
) -> ModelRegistry:
    settings = adapter_settings(tmp_path / "base.gguf", tmp_path / "adapters", **(flags or {}))
    return build_registry(settings, Metrics(), engine or FakeEngine())


def test_start_up_serves_good_folders_and_skips_bad_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = base_file(tmp_path)
    root = tmp_path / "adapters"
    make_adapter(root, "good", base, scores={"bfcl_simple": 0.5})
    make_adapter(root, "nohash")  # no base hash: served, with a warning
    other = tmp_path / "other.gguf"
    other.write_bytes(b"another model")
    make_adapter(root, "other-base", other)
    make_adapter(root, "mismatch").joinpath("manifest.json").write_text(
        (root / "good" / "manifest.json").read_text()
    )  # manifest of "good" in folder "mismatch"
    make_adapter(root, "badformat", base, tool_format="no-such-format")
    (root / "garbage").mkdir()
    (root / "garbage" / "manifest.json").write_text("{not json")
    make_adapter(root, "escape", base, files={"gguf": "../good/adapter.gguf"})
    make_adapter(root, "base", base)  # the base model's own name
    (root / "linked").symlink_to(make_adapter(tmp_path / "elsewhere", "linked", base), target_is_directory=True)
    with caplog.at_level("WARNING", logger="callgate"):
        registry = _registry(tmp_path)
    assert registry.adapters is not None and sorted(registry.adapters.served) == ["good", "nohash"]
    log = caplog.text
    assert "trained for another base model" in log and "names the adapter 'good'" in log
    assert "no-such-format" in log and "not a valid adapter manifest" in log and "outside its folder" in log
    assert "conflicts with a served base model" in log and "cannot be checked" in log
    assert "'linked' is not an adapter folder inside the adapters directory" in log
    assert registry.get("good").adapter_name == "good" and registry.names() == ["base", "good", "nohash"]
    with pytest.raises(NotFound, match="served models: base, good, nohash"):
        registry.get("other-base")


def test_the_manifest_binds_format_template_tool_choice_and_scale(tmp_path: Path) -> None:
    base = base_file(tmp_path)
    make_adapter(
        tmp_path / "adapters", "strict", base, template=MARKED_TEMPLATE, tool_choice="required", tool_format="pythonic"
    )
    make_adapter(tmp_path / "adapters", "plain", base, tool_format="auto")
    registry = _registry(tmp_path, flags={"adapters.scale": 0.5})
    strict, plain, parent = registry.get("strict"), registry.get("plain"), registry.get("base")
    assert strict.engine is parent.engine and strict.admission is parent.admission
    request = ChatRequest(messages=(Message("user", "hi"),))
    assert "[adapter-template]" in prompt_for(strict, request)
    assert "[adapter-template]" not in prompt_for(plain, request)
    assert strict.provenance.template.endswith("chat_template.jinja") and plain.provenance.template == "model"
    assert strict.format.name == "pythonic" != parent.format.name and strict.provenance.format == "configured"
    assert plain.format is parent.format and plain.provenance.format == "detected"  # "auto": from the template
    assert strict.policy.default_choice is ChoiceMode.REQUIRED and plain.policy.default_choice is ChoiceMode.AUTO
    assert strict.adapter_scale == 0.5
    wire = ChatCompletionRequest.model_validate(
        {
            "model": "strict",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    limits = adapter_settings(base, tmp_path).limits
    assert to_chat_request(wire, limits, strict.policy.default_choice).choice.mode is ChoiceMode.REQUIRED
    explicit = wire.model_copy(update={"tool_choice": "none"})
    assert to_chat_request(explicit, limits, strict.policy.default_choice).choice.mode is ChoiceMode.NONE
    no_tools = wire.model_copy(update={"tools": None})
    assert to_chat_request(no_tools, limits, strict.policy.default_choice).choice.mode is ChoiceMode.NONE


def test_an_adapter_trained_on_other_tool_prompt_wording_is_served_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Reworded, the prompt is out of the adapter's training distribution (docs/demo.md: false calls
    # 0.018 -> 0.218); the grammar still holds its calls valid, so it is served, and the log says so.
    base, root = base_file(tmp_path), tmp_path / "adapters"
    now = prompt_sha256(PLAIN_TEMPLATE, get_format("json_envelope"))
    plain = {"template": PLAIN_TEMPLATE, "tool_format": "json_envelope"}
    make_adapter(root, "same", base, **plain, tool_prompt_sha256=now)
    make_adapter(root, "reworded", base, **plain, tool_prompt_sha256="0" * 64)
    # a template with a tool section renders the tools itself: the gateway's wording is not used
    make_adapter(root, "own-section", base, template=MARKED_TEMPLATE, tool_prompt_sha256="0" * 64)
    with caplog.at_level("WARNING", logger="callgate"):
        registry = _registry(tmp_path)
    assert sorted(registry.names()) == ["base", "own-section", "reworded", "same"]
    warned = [r.getMessage() for r in caplog.records if "tool prompt" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("adapter reworded was trained on other wording")
    assert now is not None and f"now {now[:12]}" in warned[0]


def test_a_catalogue_bases_calibrated_threshold_is_not_an_adapters(tmp_path: Path) -> None:
    # The catalogue's threshold is calibrated on the base model's probabilities; an adapter moves
    # them (a support adapter opens its calls with far more confidence), so it gets its own
    # manifest's threshold, or the operator's setting, never the base's calibration.
    base = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"  # a catalogue file, judged by its name
    base.write_bytes(b"GGUF not really a model")
    make_adapter(tmp_path / "adapters", "own", base, no_tool_threshold=0.4)
    make_adapter(tmp_path / "adapters", "plain", base)

    def thresholds(**flags: object) -> list[float | None]:
        settings = adapter_settings(base, tmp_path / "adapters", **flags)
        registry = build_registry(settings, Metrics(), FakeEngine())
        return [registry.get(name).policy.no_tool_threshold for name in ("base", "own", "plain")]

    assert thresholds() == [0.2, 0.4, None]
    assert thresholds(**{"model.no_tool_threshold": 0.6}) == [0.6, 0.4, 0.6]  # the operator's: everyone's
    assert thresholds(**{"model.catalogue_threshold": False}) == [None, 0.4, None]


def _answer(served: Served, metrics: Metrics) -> list[object]:
    request = ChatRequest(
        messages=(Message("user", "where is order 7?"),),
        tools=(TOOL,),
        choice=ToolChoice(ChoiceMode.REQUIRED),
        sampling=Sampling(max_tokens=64, seed=1),
    )

    async def collect() -> list[object]:
        return [e async for e in run_chat(served, request, metrics, Cancel())]

    return asyncio.run(collect())


def test_a_request_to_an_adapter_loads_it_names_it_and_fills_the_metrics_label(tmp_path: Path) -> None:
    base = base_file(tmp_path)
    make_adapter(tmp_path / "adapters", "support", base)
    engine = FakeEngine([([GOOD], "stop")])
    registry = _registry(tmp_path, engine, {"adapters.scale": 0.75})
    metrics = Metrics()
    events = _answer(registry.get("support"), metrics)
    assert engine.loads == ["support"] and type(events[0]).__name__ == "CallEvent"
    sent = engine.requests[-1]
    assert sent.adapter == "support" and sent.adapter_scale == 0.75
    labels = {"model": "support", "adapter": "support", "tool": "track_order", "mode": "required", "outcome": "valid"}
    assert metrics.registry.get_sample_value("callgate_tool_calls_total", labels) == 1
    assert registry.adapters is not None and registry.adapters.pool.refs("support") == 0  # lease given back


def test_a_slow_adapter_load_holds_no_engine_slot(tmp_path: Path) -> None:
    """The lease comes before the queue: with one engine slot, a request to the base model runs
    while an adapter's load is still under way."""
    base = base_file(tmp_path)
    make_adapter(tmp_path / "adapters", "slow", base)
    engine = FakeEngine([(["hello"], "stop"), (["hi there"], "stop")])
    registry = _registry(tmp_path, engine)

    async def scenario() -> None:
        engine.load_gate = asyncio.Event()
        request = ChatRequest(messages=(Message("user", "hi"),), sampling=Sampling(max_tokens=8))
        adapter_answer = asyncio.create_task(_collect(registry.get("slow"), request))
        await asyncio.sleep(0.02)
        await asyncio.wait_for(_collect(registry.get("base"), request), 1)
        assert not adapter_answer.done()
        engine.load_gate.set()
        await asyncio.wait_for(adapter_answer, 2)

    asyncio.run(scenario())
    assert [r.adapter for r in engine.requests] == [None, "slow"]


async def _collect(served: Served, request: ChatRequest) -> list[object]:
    return [e async for e in run_chat(served, request, Metrics(), Cancel())]


# --- the admin side and persistence ---


def test_load_unload_and_state_survive_a_restart(tmp_path: Path) -> None:
    base = base_file(tmp_path)
    root = tmp_path / "adapters"
    make_adapter(root, "a", base)
    registry = _registry(tmp_path)
    assert registry.adapters is not None
    make_adapter(root, "b", base)  # exported while the gateway runs
    with pytest.raises(NotFound):
        registry.get("b")

    async def admin() -> None:
        assert registry.adapters is not None
        await registry.adapters.load("b", "b", pinned=True)
        await registry.adapters.unload("a")
        with pytest.raises(NotFound, match="cannot be found"):
            await registry.adapters.unload("a")
        with pytest.raises(InvalidRequest, match="already been loaded"):
            await registry.adapters.load("b", str(root / "b"))
        await registry.adapters.load("b", str(root / "b"), inplace=True)

    asyncio.run(admin())
    assert registry.names() == ["base", "b"]
    state = json.loads((root / STATE_FILE).read_text())
    assert state["adapters"] == {"a": {"enabled": False, "pinned": False}, "b": {"enabled": True, "pinned": True}}
    again = _registry(tmp_path)
    assert again.names() == ["base", "b"] and again.adapters is not None and "b" in again.adapters.pool.pinned


def test_admin_load_refuses_bad_folders_and_engine_failures(tmp_path: Path) -> None:
    base = base_file(tmp_path)
    root = tmp_path / "adapters"
    make_adapter(root, "ok", base)
    registry = _registry(tmp_path, FakeEngine(broken={"broken"}))
    adapters = registry.adapters
    assert adapters is not None
    make_adapter(root, "broken", base)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"x")
    make_adapter(root, "wrongbase", other)

    async def admin() -> None:
        assert adapters is not None
        for name, path, message in [
            ("broken", "broken", "could not be loaded: .*not a GGUF LoRA; check the files"),
            ("wrongbase", "wrongbase", "trained for another base model"),
            ("missing", "missing", "has no manifest.json"),
            ("base", "base", "conflicts with a served base model"),
            ("../x", "../x", "not a valid adapter name"),
        ]:
            with pytest.raises(AdapterRefused, match=message):
                await adapters.load(name, path)

    asyncio.run(admin())
    assert registry.names() == ["base", "ok"] and not (root / STATE_FILE).exists()


def test_pins_must_fit_and_a_load_that_finds_no_slot_serves_nothing(tmp_path: Path) -> None:
    base = base_file(tmp_path)
    root = tmp_path / "adapters"
    make_adapter(root, "a", base)
    registry = _registry(tmp_path, flags={"adapters.max_loaded": 1, "limits.queue_timeout_s": 0.2})
    adapters = registry.adapters
    assert adapters is not None
    for name in ("b", "c"):  # new: not served until loaded
        make_adapter(root, name, base)

    async def admin() -> None:
        assert adapters is not None
        await adapters.load("a", "a", inplace=True, pinned=True)
        with pytest.raises(InvalidRequest, match="cannot pin 'b'"):
            await adapters.load("b", "b", inplace=True, pinned=True)
        with pytest.raises(AdapterCapacity):  # the one slot is pinned
            await adapters.load("c", "c", inplace=True)
        await adapters.load("a", "a", inplace=True, pinned=False)
        async with adapters.served["a"].lease():  # busy: "b" waits for the slot, then gives up
            with pytest.raises(Timeout):
                await adapters.load("b", "b", inplace=True)

    asyncio.run(admin())
    assert registry.names() == ["base", "a"]


def test_a_corrupt_state_file_is_refused_at_start(tmp_path: Path) -> None:
    base_file(tmp_path)
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / STATE_FILE).write_text('{"adapters": {"a": {"enabled": "maybe"}}}')
    with pytest.raises(ConfigError, match="fix it or delete it"):
        _registry(tmp_path)


def test_no_adapters_folder_means_no_adapters(tmp_path: Path) -> None:
    base_file(tmp_path)
    registry = _registry(tmp_path)
    assert registry.names() == ["base"]


def test_more_pinned_adapters_than_slots_is_refused() -> None:
    with pytest.raises(ConfigError, match="pinned adapters must all fit"):
        adapter_settings(Path("x"), Path("y"), **{"adapters.pinned": ["a", "b"], "adapters.max_loaded": 1})


def test_the_registry_imports_no_http_framework() -> None:
    import subprocess
    import sys

    code = "import sys, server.adapters.registry, server.adapters.pool; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": "."}
    ).stdout
    assert "fastapi" not in out and "server.api" not in out and "training" not in out
