"""POST /v1/chat/completions (JSON and SSE) and POST /apply-template."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.api.app import GatewayDep
from server.api.responses import ChunkWriter, Envelope, completion
from server.api.translate import to_chat_request, to_messages, to_tools
from server.api.wire import ApplyTemplateRequest, ChatCompletionRequest
from server.chat import ChatEvent, ChatRequest, prompt_for, run_chat
from server.engines.base import Cancel
from server.errors import GatewayError

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, gw: GatewayDep) -> Response:
    served = gw.models.get(body.model)
    request.state.model, request.state.adapter = served.name, served.adapter or "none"
    chat = to_chat_request(body, gw.settings.limits)
    cancel = Cancel()
    events = run_chat(served, chat, gw.metrics, cancel)
    env = Envelope(model=served.name)
    async with _cancel_on_disconnect(request, cancel):
        if not body.stream:
            return JSONResponse(completion(env, [e async for e in events]))
        first = await anext(events)  # errors before the first event are plain HTTP errors
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    writer = ChunkWriter(env, include_usage)
    return StreamingResponse(
        _sse(writer, first, events, cancel),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    writer: ChunkWriter, first: ChatEvent, events: AsyncIterator[ChatEvent], cancel: Cancel
) -> AsyncIterator[bytes]:
    try:
        yield writer.role()
        yield writer.event(first)
        async for event in events:
            yield writer.event(event)
    except GatewayError as exc:
        yield writer.error(exc)  # after the first byte, errors travel as a final SSE event
    finally:
        cancel.set()  # the client went away (or we are done): stop generating
        await events.aclose()  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Request, cancel: Cancel) -> AsyncIterator[None]:
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@router.post("/apply-template")
async def apply_template(body: ApplyTemplateRequest, gw: GatewayDep) -> dict[str, str]:
    served = gw.models.get(body.model) if body.model else gw.models.default()
    limits = gw.settings.limits
    request = ChatRequest(messages=to_messages(body.messages, limits), tools=to_tools(body.tools or [], limits))
    return {"prompt": prompt_for(served, request)}
