"""POST /v1/chat/completions (JSON and SSE) and POST /apply-template, behind the inference key.

A client that disconnects before its answer starts is dropped at once, queue place included;
once streaming, the stream's own disconnect stops the generation at the next token.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.api.app import GatewayDep, InferenceDep
from server.api.middleware import Lifecycle, ShuttingDown
from server.api.responses import ChunkWriter, Envelope, completion
from server.api.translate import to_chat_request, to_messages, to_tools
from server.api.wire import ApplyTemplateRequest, ChatCompletionRequest, ResponseFormat, ToolDef
from server.chat import ChatEvent, ChatRequest, DoneEvent, prompt_for, run_chat
from server.config import LimitsSection
from server.engines.base import Cancel
from server.errors import GatewayError
from server.limits import Schemas, check_schema_budget
from server.plaintext import unmarked
from server.types import ChoiceMode

router = APIRouter(dependencies=[InferenceDep])
T = TypeVar("T")
CLIENT_GONE = 499  # nginx's "client closed request": only metrics ever see it


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, gw: GatewayDep) -> Response:
    served = gw.models.get(body.model)
    request.state.model, request.state.adapter = served.name, served.adapter or "none"
    # Meta-schema checks cost ~0.2 ms a subschema: a full tool budget must not hold the loop.
    chat = await anyio.to_thread.run_sync(_translate, body, gw.settings.limits, served.default_choice)
    chat = replace(chat, client=_client(request))
    cancel = Cancel()
    untrack = gw.lifecycle.track(cancel)  # stopped at the shutdown deadline
    events = run_chat(served, chat, gw.metrics, cancel, gw.settings.limits.compile_timeout_s)
    env = Envelope(model=served.name)
    if not body.stream:
        try:
            answer = await _unless_gone(request, cancel, lambda: _collect(events, cancel, gw.lifecycle))
        finally:
            untrack()
            await events.aclose()
        return JSONResponse(completion(env, answer)) if answer is not None else Response(status_code=CLIENT_GONE)
    try:
        first = await _unless_gone(request, cancel, lambda: anext(events, None))  # errors before it are HTTP errors
    except BaseException:
        untrack()
        await events.aclose()
        raise
    if first is None:
        untrack()
        await events.aclose()
        if gw.lifecycle.aborted:
            raise ShuttingDown("the gateway shut down before this answer started; retry")
        return Response(status_code=CLIENT_GONE)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _sse(ChunkWriter(env, include_usage), first, events, _Stop(cancel, untrack, gw.lifecycle)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _client(request: Request) -> str:
    """Who asks, for fair shares of compilation: the key (as a digest), else the address."""
    auth = request.headers.get("authorization")
    if auth:
        return "key:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "")


def _translate(body: ChatCompletionRequest, limits: LimitsSection, default_choice: ChoiceMode) -> ChatRequest:
    check_schema_budget(_schemas(body.tools, body.response_format), limits)
    return to_chat_request(body, limits, default_choice)


def _schemas(tools: list[ToolDef] | None, fmt: ResponseFormat | None) -> Schemas:
    out: list[tuple[str, object]] = [
        (f"tools[{i}].function.parameters", t.function.parameters or {}) for i, t in enumerate(tools or [])]
    if fmt is not None and fmt.json_schema is not None:
        out.append(("response_format.json_schema.schema", fmt.json_schema.schema_))
    return out


async def _collect(events: AsyncGenerator[ChatEvent, None], cancel: Cancel, lifecycle: Lifecycle) -> list[ChatEvent]:
    answer = [e async for e in events]
    if lifecycle.aborted and cancel.is_set():
        raise ShuttingDown("the gateway shut down before this answer was complete; retry")
    return answer


class _Stop:
    """What ends one stream: its cancel flag, its shutdown registration, the lifecycle."""

    def __init__(self, cancel: Cancel, untrack: Callable[[], None], lifecycle: Lifecycle):
        self.cancel, self.untrack, self.lifecycle = cancel, untrack, lifecycle


async def _sse(
    writer: ChunkWriter, first: ChatEvent, events: AsyncGenerator[ChatEvent, None], stop: _Stop
) -> AsyncGenerator[bytes, None]:
    # Generation runs ahead of the client into a buffer (bounded by max_tokens): a slow reader
    # must not hold the engine slot, which is given back as soon as generation ends.
    buffer: asyncio.Queue[ChatEvent | GatewayError | None] = asyncio.Queue()
    producer = asyncio.create_task(_pump(events, buffer))
    try:
        yield writer.role()
        yield writer.event(first)
        while (item := await buffer.get()) is not None:
            if isinstance(item, GatewayError):
                raise item
            if isinstance(item, DoneEvent) and stop.lifecycle.aborted and stop.cancel.is_set():
                raise ShuttingDown("the gateway shut down before this answer was complete; retry")
            yield writer.event(item)
    except GatewayError as exc:
        yield writer.error(exc)  # after the first byte, errors travel as a final SSE event
    finally:
        stop.cancel.set()  # the client went away (or we are done): stop generating
        stop.untrack()
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        await events.aclose()


async def _pump(
    events: AsyncGenerator[ChatEvent, None], buffer: asyncio.Queue[ChatEvent | GatewayError | None]
) -> None:
    try:
        async for event in events:
            buffer.put_nowait(event)
    except GatewayError as exc:  # run_chat raises only these: engine bugs become EngineError there
        buffer.put_nowait(exc)
    finally:
        buffer.put_nowait(None)


async def _unless_gone(request: Request, cancel: Cancel, work: Callable[[], Awaitable[T]]) -> T | None:
    """`work()`, or None if the client disconnects first: then the work is cancelled where it
    is (a queue place is given back at once, a generation stops)."""
    with anyio.CancelScope() as scope:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancel.set()
            scope.cancel()

        watcher = asyncio.create_task(watch())
        try:
            return await work()
        finally:
            watcher.cancel()  # not awaited: inside a cancelled scope every await raises again
    return None


@router.post("/apply-template")
async def apply_template(body: ApplyTemplateRequest, gw: GatewayDep) -> dict[str, str]:
    served = gw.models.get(body.model) if body.model else gw.models.default()
    limits = gw.settings.limits

    def translate() -> ChatRequest:
        check_schema_budget(_schemas(body.tools, None), limits)
        return ChatRequest(messages=to_messages(body.messages, limits), tools=to_tools(body.tools or [], limits))

    return {"prompt": unmarked(prompt_for(served, await anyio.to_thread.run_sync(translate)))}
