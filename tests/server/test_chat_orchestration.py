"""Orchestration rules that a well-behaved model never triggers: bounded retry of invalid
calls, the documented answer when retries run out, cut calls, and the no-tool threshold.
A typed fake engine replays scripted output (the only fake in the suite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.admission import Admission
from server.chat import CallEvent, ChatRequest, ContentEvent, DoneEvent, prompt_for, run_chat
from server.engines.base import Cancel
from server.errors import Overloaded, Timeout
from server.metrics import Metrics
from server.serving.served import Policy, Served
from server.toolcalls import get_format
from server.types import ChoiceMode, Message, Sampling, Tool, ToolChoice
from tests.support.fakes import INFO, FakeEngine

TOOL = Tool(
    "track_order", "", {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}
)
GOOD = '<tool_call>\n{"name": "track_order", "arguments": {"order_id": 7}}\n</tool_call>'
BAD_TYPE = '<tool_call>\n{"name": "track_order", "arguments": {"order_id": "seven"}}\n</tool_call>'
UNKNOWN = '<tool_call>\n{"name": "drop_tables", "arguments": {}}\n</tool_call>'


def _served(engine: FakeEngine, retries: int = 1, threshold: float | None = None) -> Served:
    return Served(
        "fake",
        engine,
        INFO,
        get_format("hermes"),
        INFO.chat_template or "",
        Admission(1, 4, 5.0),
        Policy(no_tool_threshold=threshold, validation_retries=retries),
    )


def _request(mode: ChoiceMode = ChoiceMode.AUTO, threshold: float | None = None) -> ChatRequest:
    return ChatRequest(
        messages=(Message("user", "where is order 7?"),),
        tools=(TOOL,),
        choice=ToolChoice(mode),
        sampling=Sampling(max_tokens=64, seed=5),
        no_tool_threshold=threshold,
    )


def _run(served: Served, request: ChatRequest, metrics: Metrics | None = None) -> list[object]:
    async def collect() -> list[object]:
        return [e async for e in run_chat(served, request, metrics or Metrics(), Cancel())]

    return asyncio.run(collect())


def _outcomes(metrics: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample in metrics.tool_calls.collect()[0].samples:
        if sample.name.endswith("_total"):
            out[sample.labels["outcome"]] = out.get(sample.labels["outcome"], 0) + sample.value
    return out


def test_invalid_first_call_is_retried_and_counted_repaired() -> None:
    engine = FakeEngine([([BAD_TYPE], "stop"), ([GOOD], "stop")])
    metrics = Metrics()
    events = _run(_served(engine), _request(ChoiceMode.REQUIRED), metrics)
    calls = [e for e in events if isinstance(e, CallEvent)]
    assert [c.call.arguments for c in calls] == ['{"order_id": 7}']
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "tool_calls" and not done.invalid_calls
    assert [r.sampling.seed for r in engine.requests] == [5, 6]  # a retry samples anew
    assert _outcomes(metrics) == {"invalid": 1, "repaired": 1}


def test_retries_exhausted_reports_invalid_calls_never_returns_them() -> None:
    engine = FakeEngine([([UNKNOWN], "stop"), ([UNKNOWN], "stop")])
    metrics = Metrics()
    events = _run(_served(engine, retries=1), _request(), metrics)
    assert not [e for e in events if isinstance(e, CallEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "stop"
    assert [c.name for c in done.invalid_calls] == ["drop_tables"]
    assert "unknown tool" in done.invalid_calls[0].error
    assert _outcomes(metrics) == {"invalid": 2}


def test_no_retry_once_text_was_sent() -> None:
    engine = FakeEngine([(["Checking.\n", BAD_TYPE], "stop")])
    events = _run(_served(engine, retries=3), _request())
    assert len(engine.requests) == 1
    assert [e.text for e in events if isinstance(e, ContentEvent)] == ["Checking."]
    assert isinstance(events[-1], DoneEvent) and len(events[-1].invalid_calls) == 1


def test_cut_call_finishes_with_length_and_no_call() -> None:
    engine = FakeEngine([(['<tool_call>\n{"name": "track_order", "argum'], "length")])
    metrics = Metrics()
    events = _run(_served(engine), _request(ChoiceMode.REQUIRED), metrics)
    assert [type(e) for e in events] == [DoneEvent]
    assert isinstance(events[0], DoneEvent) and events[0].finish_reason == "length"
    assert _outcomes(metrics) == {"truncated": 1}


@pytest.mark.parametrize(
    "p_open,threshold,expected", [(0.9, 0.5, "required"), (0.2, 0.5, "none"), (0.5, 0.5, "required")]
)
def test_no_tool_threshold_decides_from_the_opening_probability(p_open: float, threshold: float, expected: str) -> None:
    engine = FakeEngine([([GOOD] if expected == "required" else ["Hello."], "stop")], p_open=p_open)
    metrics = Metrics()
    _run(_served(engine, threshold=threshold), _request(), metrics)
    grammar = engine.requests[0].grammar or ""
    # required: the grammar starts with a call; none: text that can never open one.
    assert ("start: calls" in grammar) == (expected == "required")
    assert metrics.tool_open_probability.collect()[0].samples  # observed for calibration


@pytest.mark.parametrize("p_loose,expected", [(0.05, "none"), (0.2, "auto")])
def test_the_threshold_sums_loose_openers_and_leaves_their_calls_to_the_model(p_loose: float, expected: str) -> None:
    """P(<tool_call>) 0.1 alone is under 0.5; with three loose openers (```, {", {\n) at 0.2 each
    the sum passes, yet no call is forced: the model writes its own (a ```json block)."""
    engine = FakeEngine([(["Hello."], "stop")], p_open=0.1, p_loose=p_loose)
    metrics = Metrics()
    _run(_served(engine, threshold=0.5), _request(), metrics)
    grammar = engine.requests[0].grammar or ""
    assert "start: calls" not in grammar
    assert ("start: reply | calls" in grammar) == (expected == "auto")
    [sample] = [s for s in metrics.tool_open_probability.collect()[0].samples if s.name.endswith("_sum")]
    assert sample.value == pytest.approx(min(1.0, 0.1 + 3 * p_loose))


def test_request_threshold_overrides_the_models() -> None:
    engine = FakeEngine([(["Hi."], "stop")], p_open=0.6)
    _run(_served(engine, threshold=0.5), _request(threshold=0.9))
    assert "start: calls" not in (engine.requests[0].grammar or "")


def test_queue_bound_and_deadline() -> None:
    async def scenario() -> None:
        admission = Admission(slots=1, max_queue=1, timeout_s=0.2)
        async with admission.slot():
            waiter = asyncio.create_task(_enter(admission))
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded):
                await _enter(admission)
            with pytest.raises(Timeout):
                await waiter
        async with admission.slot():  # freed: the next request gets in
            assert admission.running == 1

    asyncio.run(scenario())


async def _enter(admission: Admission) -> None:
    async with admission.slot():
        pass


@pytest.mark.parametrize(
    "fmt,prefix,candidate,p_first,expected",
    [
        # json_envelope: `{"tool_calls": [` or `{"response": `: P(call) is P("tool_calls...") after `{"`
        ("json_envelope", '{"', 'tool_calls": [', 0.9, "required"),
        ("json_envelope", '{"', 'tool_calls": [', 0.1, "none"),
        # functionary: `>>>name` or `>>>all`: the call's opener ends at `>>>`, so P(call) = 1 - P("all")
        ("functionary_v3", ">>>", "all\n", 0.9, "none"),
        ("functionary_v3", ">>>", "all\n", 0.1, "required"),
    ],
)
def test_the_threshold_decides_where_calls_and_text_part(
    fmt: str, prefix: str, candidate: str, p_first: float, expected: str
) -> None:
    """Formats whose text answers start like their calls (SmolLM2 and Gemma are served in
    json_envelope) are read after the shared start, not refused."""
    engine = FakeEngine([(["x"], "stop")], p_open=p_first)
    served = Served(
        "fake",
        engine,
        INFO,
        get_format(fmt),
        INFO.chat_template or "",
        Admission(1, 4, 5.0),
        Policy(no_tool_threshold=0.5),
    )
    assert get_format(fmt).envelope.decision_prefix == prefix
    _run(served, _request())
    [(prompt, candidates)] = engine.probed
    assert prompt == prompt_for(served, _request()) + prefix and candidates == (candidate,)
    [start] = [line for line in (engine.requests[0].grammar or "").splitlines() if line.startswith("start:")]
    assert start == {"required": "start: calls", "none": "start: reply"}[expected]


def test_a_repeated_call_ends_the_answer() -> None:
    """SmolLM2 repeated one call until max_tokens: the repeat stops generation, the answer keeps one."""
    other = GOOD.replace("7", "8")
    engine = FakeEngine([([GOOD, "\n", other, "\n", GOOD, "\n", GOOD, "\n", "text never read"], "length")])
    metrics = Metrics()
    events = _run(_served(engine), _request(ChoiceMode.REQUIRED), metrics)
    calls = [e.call.arguments for e in events if isinstance(e, CallEvent)]
    assert calls == ['{"order_id": 7}', '{"order_id": 8}']
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "tool_calls"
    assert done.completion_tokens == 5  # pieces up to the repeat, not the whole script
    assert _outcomes(metrics) == {"valid": 2}


def test_a_request_stopped_while_queued_never_reaches_the_engine() -> None:
    # At the shutdown deadline every tracked request is cancelled; one still queued then gets
    # the slot and must give it back without a prefill.
    engine = FakeEngine([([GOOD], "stop")])
    served = _served(engine)

    async def queued_then_cancelled() -> list[object]:
        cancel = Cancel()
        async with served.admission.slot():  # another request holds the only slot
            task = asyncio.create_task(_drain(run_chat(served, _request(), Metrics(), cancel)))
            await asyncio.sleep(0.05)
            cancel.set()
        return await task

    assert asyncio.run(queued_then_cancelled()) == [] and engine.requests == []


async def _drain(events: AsyncIterator[object]) -> list[object]:
    return [e async for e in events]
