"""Chat orchestration: one request, one direction.

prompt (chat template) -> constraint (tools x tool_choice x format) -> engine -> stream
parser -> validation -> events. Streaming and non-streaming answers are both built from the
events of `run_chat`, so they cannot disagree. Knows nothing of HTTP or OpenAI's wire shapes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, TypeVar

from server.constraints import Constraint, ConstraintSpec, cached_constraint, compile_constraint
from server.constraints.native import cached_native, native_constraint
from server.constraints.spec import grammar_tool
from server.engines.base import Cancel, CountsTokens, Finish, Gbnf, GenerateRequest, Piece
from server.errors import EngineError, GatewayError, InvalidRequest, UnsupportedFeature
from server.metrics import Metrics
from server.serving.served import Served
from server.toolcalls import CallDone, ParsedCall, StreamEvent, TextDelta, ToolFormat
from server.toolcalls.detect import FormatSource
from server.toolcalls.loose import reads_as_text
from server.toolcalls.prompting import render_chat
from server.toolcalls.validation import validate_call
from server.types import ChoiceMode, Message, Outcome, Sampling, TextFormat, Tool, ToolCall, ToolChoice

T = TypeVar("T")


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    choice: ToolChoice = ToolChoice()
    parallel: bool = True
    text: TextFormat = TextFormat()
    sampling: Sampling = Sampling(max_tokens=256)
    no_tool_threshold: float | None = None  # overrides the model's, when set
    thinking: bool | None = None  # the template's enable_thinking switch; None leaves its default
    client: str = ""  # who asks (a key's digest or an address): compilation is shared fairly


@dataclass(frozen=True)
class InvalidCall:
    name: str
    arguments: str
    error: str


@dataclass(frozen=True)
class ContentEvent:
    text: str


@dataclass(frozen=True)
class CallEvent:
    index: int
    call: ToolCall


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    invalid_calls: tuple[InvalidCall, ...] = ()


ChatEvent = ContentEvent | CallEvent | DoneEvent


def prompt_for(served: Served, request: ChatRequest, *, add_generation_prompt: bool = True) -> str:
    return render_chat(
        served.template,
        served.format,
        request.messages,
        request.tools,
        add_generation_prompt=add_generation_prompt,
        bos_token=served.info.bos_token,
        eos_token=served.info.eos_token,
        enable_thinking=request.thinking,
        specials=served.info.special_tokens,  # client text stays plain text (server/plaintext.py)
    )


async def count_prompt_tokens(served: Served, request: ChatRequest) -> int:
    """Tokens of the prompt `request` renders to (tools included), as the engine counts them."""
    if not isinstance(served.engine, CountsTokens):
        raise UnsupportedFeature(
            f"model {served.name!r} is served by an engine that cannot count tokens; "
            "count_tokens needs the embedded llama.cpp engine",
            param="model",
        )
    return await served.engine.count_tokens(prompt_for(served, request))


async def constraint_for(
    served: Served, request: ChatRequest, choice: ToolChoice, metrics: Metrics, timeout_s: float = 5.0
) -> Constraint:
    """Compiled off the event loop with a deadline: a schema crafted to make compilation slow
    gets a 400 instead of stalling every other request."""
    constraint = await _cached_or_compiled(
        cached_constraint, compile_constraint, _spec(served, request, choice), served.format, timeout_s, request.client
    )
    metrics.constraint_cache.labels("hit" if constraint.cached else "miss").inc()
    if not constraint.cached:
        metrics.compile_seconds.observe(constraint.compile_ms / 1000)
    return constraint


async def gbnf_for(served: Served, request: ChatRequest, choice: ToolChoice, timeout_s: float = 5.0) -> Gbnf | None:
    """The same constraint in GBNF, for engines that enforce that instead (llama-server)."""
    if served.info.grammar_syntax != "gbnf":
        return None
    native = await _cached_or_compiled(
        cached_native, native_constraint, _spec(served, request, choice), served.format, timeout_s, request.client
    )
    return Gbnf(native.gbnf, native.triggers) if native is not None else None


def _spec(served: Served, request: ChatRequest, choice: ToolChoice) -> ConstraintSpec:
    return ConstraintSpec(
        tools=request.tools,
        choice=choice,
        parallel=request.parallel,
        text=request.text,
        special_tokens=served.info.special_tokens,
        token_ids=_marker_ids(served),
    )


def _marker_ids(served: Served) -> tuple[tuple[str, int], ...]:
    env = served.format.envelope
    markers = {env.open, env.close, env.args_open}
    return tuple(pair for pair in served.info.special_token_ids if pair[0] in markers)


async def _cached_or_compiled(
    cached: Callable[[ConstraintSpec, ToolFormat], tuple[T] | None],
    compile: Callable[[ConstraintSpec, ToolFormat], T],
    spec: ConstraintSpec,
    fmt: ToolFormat,
    timeout_s: float,
    client: str,
) -> T:
    """The cached result (hits skip the pool hop, ~60 us), else compiled in the pool. One
    compilation per client at a time, held until its thread is really done (a compilation past its
    deadline cannot be stopped): one client's slow tool sets wait for each other and cannot hold
    both threads while everyone else gets 400s."""
    if (hit := cached(spec, fmt)) is not None:
        return hit[0]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    key = (loop, client)
    while (busy := _compiling.get(key)) is not None and loop.time() < deadline:
        await asyncio.wait({busy}, timeout=deadline - loop.time())
        # A burst of one client's requests with the same tools: the first compiles, the others
        # find its result cached instead of queueing one thread hop each behind it (96 such hops
        # outlasted the deadline on a loaded 2-core machine).
        if (hit := cached(spec, fmt)) is not None:
            return hit[0]
    if busy is None:
        work = loop.run_in_executor(_compile_pool(), compile, spec, fmt)
        _compiling[key] = work
        work.add_done_callback(lambda done: _finished(key, done))
        await asyncio.wait({work}, timeout=deadline - loop.time())
        if work.done():
            return work.result()
    raise InvalidRequest(
        f"compiling the constraint for these tools took over {timeout_s:g}s "
        "(limits.compile_timeout_s); send fewer or simpler tool schemas",
        param="tools",
        code="constraint_too_complex",
    )


_Key = tuple[asyncio.AbstractEventLoop, str]
_compiling: dict[_Key, asyncio.Future[Any]] = {}  # (loop, client) -> its compilation still running


def _finished(key: _Key, done: asyncio.Future[Any]) -> None:
    if _compiling.get(key) is done:
        del _compiling[key]
    if not done.cancelled():
        done.exception()  # retrieved: a compilation nobody waits for any more fails quietly


@cache
def _compile_pool() -> ThreadPoolExecutor:
    # Two threads: a slow compilation that ran past its deadline cannot be stopped, so it may
    # hold one while others go on; past two, compilations queue (and time out) instead of piling up.
    return ThreadPoolExecutor(2, thread_name_prefix="compile")


async def run_chat(
    served: Served, request: ChatRequest, metrics: Metrics, cancel: Cancel, compile_timeout_s: float = 5.0
) -> AsyncGenerator[ChatEvent, None]:
    """Generate one answer. Raises GatewayError before the first event for bad requests."""
    prompt = prompt_for(served, request)
    # Compiled before queueing, so bad tools are refused without waiting for a slot.
    constraint = await constraint_for(served, request, request.choice, metrics, compile_timeout_s)
    gbnf = await gbnf_for(served, request, request.choice, compile_timeout_s)
    # The lease comes before the queue: loading an adapter holds no engine slot.
    async with served.lease(), served.admission.slot() as waited:
        metrics.queue_wait_seconds.labels(served.name).observe(waited)
        if cancel.is_set():  # stopped while queued (client gone, shutdown): no prefill
            return
        try:
            choice = await _decide(served, request, prompt, metrics)
            if choice != request.choice:  # the no-tool threshold settled the mode
                constraint = await constraint_for(served, request, choice, metrics, compile_timeout_s)
                gbnf = await gbnf_for(served, request, choice, compile_timeout_s)
            run = _Run(served, request, choice, metrics, gbnf, compile_timeout_s)
            async for event in run.attempts(prompt, constraint, cancel):
                yield event
        except EngineError:
            metrics.engine_errors.labels(served.name).inc()
            raise
        except GatewayError:
            raise
        except Exception as exc:  # an engine bug must end the answer with an error, not a cut stream
            metrics.engine_errors.labels(served.name).inc()
            raise EngineError(f"the engine failed: {type(exc).__name__}: {exc}") from exc


async def call_probabilities(served: Served, prompt: str) -> tuple[float, float]:
    """(P(the format's own opener), P(any opener)) at the token where a call and a text answer part:
    the first token for most formats; after their shared start for formats whose text answers
    begin like calls (`{"` in json_envelope, `>>>` in functionary), where P(call) is P(the call's
    next token) or, when the opener ends at the shared start (a function name follows), 1 - P(text).
    The loose openers (a ```json block) count only where the decision is at the first token."""
    env = served.format.envelope
    prefix = env.decision_prefix
    call_rest, text_rest = env.open[len(prefix) :], env.reply[0][len(prefix) :]
    loose = env.loose_openers if not prefix else ()
    probs = await served.engine.token_probabilities(
        prompt + prefix, [call_rest or text_rest, *loose], served.adapter_name, served.adapter_scale
    )
    p_open = probs[0] if call_rest else 1.0 - probs[0]
    return p_open, min(1.0, p_open + sum(probs[1:]))


async def _decide(served: Served, request: ChatRequest, prompt: str, metrics: Metrics) -> ToolChoice:
    """The calibrated no-tool decision in `auto`, from the probabilities of the next token where a
    call and a text answer part (`call_probabilities`): below the threshold summed over every opener
    (the format's own and the loose ones its models write, such as a ```json block), no call
    (`none`); at or above it on the format's own opener alone, a call (`required`); else the
    model's own answer decides, as in plain `auto`."""
    threshold = request.no_tool_threshold
    if threshold is None:
        threshold = served.policy.no_tool_threshold
    if threshold is None or not request.tools or request.choice.mode is not ChoiceMode.AUTO:
        return request.choice
    p_open, p_any = await call_probabilities(served, prompt)
    metrics.tool_open_probability.labels(served.name).observe(p_any)
    if p_any < threshold:
        return ToolChoice(ChoiceMode.NONE)
    return ToolChoice(ChoiceMode.REQUIRED) if p_open >= threshold else request.choice


class _Run:
    """The attempts of one request: generate, parse, validate; retry while nothing was sent."""

    def __init__(
        self,
        served: Served,
        request: ChatRequest,
        choice: ToolChoice,
        metrics: Metrics,
        gbnf: Gbnf | None = None,
        compile_timeout_s: float = 5.0,
    ):
        self.served = served
        self.compile_timeout_s = compile_timeout_s
        self.gbnf = gbnf
        self.request = request
        self.choice = choice
        self.metrics = metrics
        self.tools: Mapping[str, Tool] = {t.name: t for t in request.tools}
        # Calls are validated against the schemas the grammar enforces (closed objects), so a
        # call read outside the grammar (a ```json block) is held to what the grammar would allow.
        self.enforced: Mapping[str, Tool] = {t.name: grammar_tool(t) for t in request.tools}
        self.labels = (served.name, served.adapter_name or "none")
        self.prompt_tokens = 0
        self.completion_tokens = 0

    async def attempts(self, prompt: str, constraint: Constraint, cancel: Cancel) -> AsyncIterator[ChatEvent]:
        retries = self.served.policy.validation_retries
        for attempt in range(retries + 1):
            state = _AttemptState(repaired=attempt > 0)
            sampling = self._sampling(attempt)
            engine_request = GenerateRequest(
                prompt, sampling, constraint.lark, self.served.adapter_name, self.served.adapter_scale, self.gbnf
            )
            async for event in self._generate(engine_request, cancel, state):
                yield event
            if not state.retry_wanted:
                break
            self._count(Outcome.INVALID, state.invalid[-1].name)
            if state.loose_failed:
                # The model meant a call of a declared tool but wrote it outside the grammar (a
                # ```json block): the retry writes it under the grammar, where it cannot fail.
                required = ToolChoice(ChoiceMode.REQUIRED)
                constraint = await constraint_for(
                    self.served, self.request, required, self.metrics, self.compile_timeout_s
                )
                self.gbnf = await gbnf_for(self.served, self.request, required, self.compile_timeout_s)
        yield self._done(state)

    async def _generate(
        self, request: GenerateRequest, cancel: Cancel, state: _AttemptState
    ) -> AsyncIterator[ChatEvent]:
        parser = self.served.format.stream_parser()
        start = time.perf_counter()
        first: float | None = None
        attempt_cancel = Cancel()
        produced = 0
        async for item in self.served.engine.generate(request, attempt_cancel):
            if cancel.is_set():
                attempt_cancel.set()
                return
            if isinstance(item, Piece):
                first = first or time.perf_counter()
                produced += item.tokens
                for event in self._handle(parser.feed(item.text), state):
                    yield event
                if state.retry_wanted:
                    attempt_cancel.set()  # a bad first call: stop this attempt and regenerate
                    return
                if state.repeated:  # the answer is complete: what follows would only repeat it
                    attempt_cancel.set()
                    state.finish = Finish("stop", await self._prompt_tokens(request.prompt), produced)
                    break
            elif isinstance(item, Finish):
                state.finish = item
        if not state.repeated:
            for event in self._handle(parser.close(), state):
                yield event
            state.unclosed = parser.unclosed
        self._record_timing(start, first, state)

    async def _prompt_tokens(self, prompt: str) -> int:
        engine = self.served.engine
        return await engine.count_tokens(prompt) if isinstance(engine, CountsTokens) else 0

    def _handle(self, events: list[StreamEvent], state: _AttemptState) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        for event in events:
            if isinstance(event, TextDelta):
                state.sent = True
                out.append(ContentEvent(event.text))
            elif isinstance(event, CallDone):
                out.extend(self._call(event.call, state))
        return out

    def _call(self, parsed: ParsedCall, state: _AttemptState) -> list[ChatEvent]:
        if parsed.raw is not None and not self._loose_is_call(parsed, state):
            state.sent = True
            return [ContentEvent(parsed.raw)]
        error = validate_call(parsed, self.enforced)
        if error is not None:
            state.invalid.append(InvalidCall(parsed.name, parsed.arguments, error))
            state.loose_failed = parsed.raw is not None
            state.retry_wanted = not state.sent
            if not state.retry_wanted:
                self._count(Outcome.INVALID, parsed.name)
            return []
        if (parsed.name, parsed.arguments) in state.made:
            # Small models loop on a call (SmolLM2 wrote the same one until max_tokens): an
            # identical call adds nothing to the answer, so it ends the answer instead.
            state.repeated = True
            return []
        state.made.add((parsed.name, parsed.arguments))
        call = ToolCall(name=parsed.name, arguments=parsed.arguments, id=_call_id())
        self._count(Outcome.REPAIRED if state.repaired else Outcome.VALID, call.name)
        state.sent = True
        state.calls += 1
        return [CallEvent(index=state.calls - 1, call=call)]

    def _loose_is_call(self, parsed: ParsedCall, state: _AttemptState) -> bool:
        """A call written outside the format's markers (a ```json block, a bare object) is a call
        only if it names a declared tool in a mode that allows it; else it is the text it was."""
        if reads_as_text(parsed, self.tools) or self.choice.mode is ChoiceMode.NONE:
            return False
        return self.request.parallel or state.calls == 0

    def _done(self, state: _AttemptState) -> DoneEvent:
        finish = state.finish
        reason = finish.reason if finish else "stop"
        if state.unclosed:
            self._count(Outcome.TRUNCATED, "_truncated")
        elif state.calls:
            reason = "tool_calls"
        elif self.request.tools and not state.invalid:
            self._count(Outcome.NO_TOOL, "_none")
        return DoneEvent(reason, self.prompt_tokens, self.completion_tokens, tuple(state.invalid))

    def _sampling(self, attempt: int) -> Sampling:
        seed = self.request.sampling.seed
        if attempt and seed is not None:
            return replace(self.request.sampling, seed=seed + attempt)
        return self.request.sampling

    def _record_timing(self, start: float, first: float | None, state: _AttemptState) -> None:
        finish = state.finish
        if finish is None:
            return
        self.prompt_tokens += finish.prompt_tokens
        self.completion_tokens += finish.completion_tokens
        m = self.metrics
        m.prompt_tokens.labels(*self.labels).inc(finish.prompt_tokens)
        m.completion_tokens.labels(*self.labels).inc(finish.completion_tokens)
        if first is not None:
            m.ttft_seconds.labels(*self.labels).observe(first - start)
            if finish.completion_tokens > 1:
                per_token = (time.perf_counter() - first) / (finish.completion_tokens - 1)
                m.inter_token_seconds.labels(*self.labels).observe(per_token)

    def _count(self, outcome: Outcome, tool: str) -> None:
        label = tool if tool.startswith("_") else self.metrics.tool_label(tool if tool in self.tools else "_unknown")
        self.metrics.tool_calls.labels(*self.labels, label, self.choice.label, outcome.value).inc()


@dataclass
class _AttemptState:
    repaired: bool
    sent: bool = False
    calls: int = 0
    retry_wanted: bool = False
    repeated: bool = False  # a call repeated an earlier one: the answer ends there
    loose_failed: bool = False  # the failed call was written outside the format's markers
    unclosed: bool = False
    finish: Finish | None = None

    def __post_init__(self) -> None:
        self.invalid: list[InvalidCall] = []
        self.made: set[tuple[str, str]] = set()


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


__all__ = [
    "CallEvent",
    "ChatEvent",
    "ChatRequest",
    "ContentEvent",
    "DoneEvent",
    "FormatSource",
    "GatewayError",
    "InvalidCall",
    "Served",
    "run_chat",
]
