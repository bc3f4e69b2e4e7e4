"""POST /v1/chat/completions (JSON and SSE) and POST /apply-template, behind the inference key.

`prepare` is the one way into the chat core for a chat-shaped request; the Responses and
Messages routes translate their bodies into one and come through it too. Running and
delivering (disconnects, drain, SSE) is api/delivery.py's.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.delivery import deliver
from server.api.deps import Gateway, GatewayDep, InferenceDep
from server.api.responses import AnswerHeader, ChunkWriter, completion
from server.api.translate import to_chat_request, to_messages, to_tools
from server.api.wire import ApplyTemplateRequest, ChatCompletionRequest, ResponseFormat, ToolDef
from server.chat import ChatEvent, ChatRequest, prompt_for
from server.config import LimitsSection
from server.limits import Schemas, check_schema_budget
from server.plaintext import unmarked
from server.serving.served import Served
from server.templates import thinking_switch
from server.types import ChoiceMode

router = APIRouter(dependencies=[InferenceDep])


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, gw: GatewayDep) -> Response:
    served, chat = await prepare(body, request, gw)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await deliver(request, gw, served, chat, bool(body.stream), _Chat(AnswerHeader(served.name), include_usage))


async def prepare(body: ChatCompletionRequest, request: Request, gw: Gateway) -> tuple[Served, ChatRequest]:
    """The model it names and the ChatRequest it means, every request-level rule checked: the
    one path from a chat-shaped request (the other APIs translate into one) to the core."""
    served = gw.models.get(body.model)
    request.state.model, request.state.adapter = served.name, served.adapter_name or "none"
    # Meta-schema checks cost ~0.2 ms a subschema: a full tool budget must not hold the loop.
    chat = await anyio.to_thread.run_sync(
        _translate, body, gw.settings.limits, served.policy.default_choice, thinking_switch(served.template)
    )
    return served, replace(chat, client=_client(request))


class _Chat:
    def __init__(self, env: AnswerHeader, include_usage: bool):
        self.env, self.include_usage = env, include_usage

    def body(self, events: list[ChatEvent]) -> dict[str, Any]:
        return completion(self.env, events)

    def writer(self) -> ChunkWriter:
        return ChunkWriter(self.env, self.include_usage)


def _client(request: Request) -> str:
    """Who asks, for fair shares of compilation: the key (as a digest), else the address."""
    auth = request.headers.get("authorization")
    if auth:
        return "key:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "")


def _translate(
    body: ChatCompletionRequest, limits: LimitsSection, default_choice: ChoiceMode, thinking: bool
) -> ChatRequest:
    check_schema_budget(_schemas(body.tools, body.response_format), limits)
    return to_chat_request(body, limits, default_choice, thinking)


def _schemas(tools: list[ToolDef] | None, fmt: ResponseFormat | None) -> Schemas:
    out: list[tuple[str, object]] = [
        (f"tools[{i}].function.parameters", t.function.parameters or {}) for i, t in enumerate(tools or [])
    ]
    if fmt is not None and fmt.json_schema is not None:
        out.append(("response_format.json_schema.schema", fmt.json_schema.schema_))
    return out


@router.post("/apply-template")
async def apply_template(body: ApplyTemplateRequest, gw: GatewayDep) -> dict[str, str]:
    served = gw.models.get(body.model) if body.model else gw.models.default()
    limits = gw.settings.limits

    def translate() -> ChatRequest:
        check_schema_budget(_schemas(body.tools, None), limits)
        return ChatRequest(messages=to_messages(body.messages, limits), tools=to_tools(body.tools or [], limits))

    chat = await anyio.to_thread.run_sync(translate)
    return {"prompt": unmarked(prompt_for(served, chat, add_generation_prompt=body.add_generation_prompt))}
