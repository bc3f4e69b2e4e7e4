"""One translated request, run on the chat core and delivered as JSON or SSE, for every API.

Each API (chat completions, Responses, Messages) hands over a ChatRequest and a `Render`: how
the finished events become its JSON body, and a writer for its own SSE grammar. Disconnects,
the shutdown drain and the generation buffer are handled here once; this module knows no wire shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.api.deps import Gateway
from server.api.middleware import Lifecycle, ShuttingDown
from server.chat import ChatEvent, ChatRequest, DoneEvent, run_chat
from server.errors import GatewayError
from server.serving.served import Served
from server.types import Cancel

T = TypeVar("T")
CLIENT_GONE = 499  # nginx's "client closed request": only metrics ever see it


class StreamWriter(Protocol):
    """SSE bytes for one answer in one API's event grammar."""

    def start(self) -> bytes: ...

    def event(self, event: ChatEvent) -> bytes: ...

    def error(self, exc: GatewayError) -> bytes: ...


class Render(Protocol):
    def body(self, events: list[ChatEvent]) -> dict[str, Any]: ...

    def writer(self) -> StreamWriter: ...


async def deliver(
    request: Request, gw: Gateway, served: Served, chat: ChatRequest, stream: bool, render: Render
) -> Response:
    """Run `chat` on `served`; errors before the first event propagate as HTTP errors."""
    cancel = Cancel()
    untrack = gw.lifecycle.track(cancel)  # stopped at the shutdown deadline
    events = run_chat(served, chat, gw.metrics, cancel, gw.settings.limits.compile_timeout_s)
    if not stream:
        try:
            answer = await _unless_gone(request, cancel, lambda: _collect(events, cancel, gw.lifecycle))
        finally:
            untrack()
            await events.aclose()
        return JSONResponse(render.body(answer)) if answer is not None else Response(status_code=CLIENT_GONE)
    try:
        first = await _unless_gone(request, cancel, lambda: anext(events, None))
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
    return StreamingResponse(
        _sse(render.writer(), first, events, _Stop(cancel, untrack, gw.lifecycle)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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
    writer: StreamWriter, first: ChatEvent, events: AsyncGenerator[ChatEvent, None], stop: _Stop
) -> AsyncGenerator[bytes, None]:
    # Generation runs ahead of the client into a buffer (bounded by max_tokens): a slow reader
    # must not hold the engine slot, which is given back as soon as generation ends.
    buffer: asyncio.Queue[ChatEvent | GatewayError | None] = asyncio.Queue()
    producer = asyncio.create_task(_pump(events, buffer))
    try:
        yield writer.start()
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
