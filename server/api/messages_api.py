"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, translated at the
edge onto the chat core.

A Messages body becomes the chat-completions body it means (tool_use blocks -> an assistant's
tool_calls, tool_result blocks -> tool messages, `any` -> required, `tool` -> named) and goes the
chat route's one way in (`prepare`), so every guarantee is the chat core's. Auth takes the
`x-api-key` header too (api/app.py); errors use Anthropic's shape (api/errors.py).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from server.api.chat_routes import prepare
from server.api.delivery import deliver
from server.api.deps import GatewayDep, InferenceDep
from server.api.messages_events import MessagesRender
from server.api.messages_wire import (
    AnthropicMessage,
    CountTokensRequest,
    CustomTool,
    MessagesRequest,
    TextBlock,
    ThinkingParam,
    ToolChoiceParam,
    ToolResultBlock,
    ToolUseBlock,
)
from server.api.translate import check_answers, parse_as
from server.api.wire import (
    ChatCompletionRequest,
    FunctionCall,
    FunctionDef,
    JsonSchemaFormat,
    MessageWire,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    ToolCallWire,
    ToolDef,
)
from server.chat import count_prompt_tokens
from server.errors import InvalidRequest, UnsupportedFeature

router = APIRouter(dependencies=[InferenceDep])


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request, gw: GatewayDep) -> Response:
    served, chat = await prepare(to_chat_wire(body), request, gw)
    return await deliver(request, gw, served, chat, bool(body.stream), MessagesRender(served.name))


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request, gw: GatewayDep) -> dict[str, int]:
    served, chat = await prepare(to_chat_wire(body), request, gw)
    return {"input_tokens": await count_prompt_tokens(served, chat)}


def to_chat_wire(body: CountTokensRequest) -> ChatCompletionRequest:
    full = body if isinstance(body, MessagesRequest) else None
    if full is not None and full.top_k is not None:
        raise UnsupportedFeature("top_k is not supported by callgate; omit it (top_p is)", param="top_k")
    if body.messages[-1].role == "assistant":  # read as a finished turn, it would answer something else
        raise UnsupportedFeature(
            "a final assistant message (prefill) is not supported: callgate answers with a new assistant "
            "turn; end with a user message",
            param=f"messages[{len(body.messages) - 1}]",
        )
    _check_results(body.messages)
    choice = body.tool_choice
    tools = [_tool(i, t) for i, t in enumerate(body.tools or [])]
    fmt = body.output_config.format if body.output_config else None
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=_system(body.system) + [m for i, msg in enumerate(body.messages) for m in _turn(i, msg)],
            tools=tools or None,
            tool_choice=_tool_choice(choice),
            parallel_tool_calls=False if choice and choice.disable_parallel_tool_use else None,
            response_format=ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(schema_=fmt.schema_))
            if fmt
            else None,
            reasoning_effort=_effort(body.thinking),
            max_tokens=full.max_tokens if full else None,
            stop=full.stop_sequences if full else None,
            temperature=full.temperature if full else None,
            top_p=full.top_p if full else None,
            seed=full.seed if full else None,
            no_tool_threshold=full.no_tool_threshold if full else None,
        )
    except ValidationError as exc:  # rendered like any other invalid body
        raise RequestValidationError(exc.errors()) from None


def _system(system: str | list[dict[str, Any]] | None) -> list[MessageWire]:
    if system is None:
        return []
    text = (
        system
        if isinstance(system, str)
        else "".join(parse_as(TextBlock, block, f"system[{j}]").text for j, block in enumerate(system))
    )
    return [MessageWire(role="system", content=text)]


def _turn(i: int, message: AnthropicMessage) -> list[MessageWire]:
    """One Anthropic message: a user turn's tool_result blocks become tool messages, which come
    before its text (they answer the assistant turn before it); an assistant turn is one message."""
    if isinstance(message.content, str):
        return [MessageWire(role=message.role, content=message.content)]
    texts: list[str] = []
    calls: list[ToolCallWire] = []
    results: list[MessageWire] = []
    for j, block in enumerate(message.content):
        where = f"messages[{i}].content[{j}]"
        kind = block.get("type")
        if kind == "text":
            texts.append(parse_as(TextBlock, block, where).text)
        elif kind == "tool_use" and message.role == "assistant":
            use = parse_as(ToolUseBlock, block, where)
            calls.append(ToolCallWire(id=use.id, function=FunctionCall(name=use.name, arguments=json.dumps(use.input))))
        elif kind == "tool_result" and message.role == "user":
            results.append(_result(parse_as(ToolResultBlock, block, where), where))
        elif kind not in ("thinking", "redacted_thinking"):  # callgate never returns them; replays are dropped
            raise UnsupportedFeature(
                f"{where} is a {kind!r} block in a {message.role} turn; callgate takes text, "
                "tool_use (assistant) and tool_result (user) blocks",
                param=f"{where}.type",
            )
    if message.role == "assistant":
        return [MessageWire(role="assistant", content="".join(texts) or None, tool_calls=calls or None)]
    return results + [MessageWire(role="user", content="".join(texts))] if texts or not results else results


def _check_results(messages: list[AnthropicMessage]) -> None:
    """Every tool_result answers an earlier tool_use: checked here, so a 400 names the block."""
    made: set[str] = set()
    for i, message in enumerate(messages):
        for j, block in enumerate(message.content if isinstance(message.content, list) else []):
            if message.role == "assistant" and block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                made.add(block["id"])
            elif message.role == "user" and block.get("type") == "tool_result":
                use_id = block.get("tool_use_id")
                check_answers(str(use_id), made, f"messages[{i}].content[{j}].tool_use_id")


def _result(block: ToolResultBlock, where: str) -> MessageWire:
    content = (
        block.content
        if isinstance(block.content, str)
        else "".join(parse_as(TextBlock, part, f"{where}.content[{k}]").text for k, part in enumerate(block.content))
    )
    if block.is_error:
        content = "Error: " + content  # the model sees that the call failed
    return MessageWire(role="tool", tool_call_id=block.tool_use_id, content=content)


def _tool(i: int, raw: dict[str, Any]) -> ToolDef:
    kind = raw.get("type")
    if kind not in (None, "custom"):
        raise UnsupportedFeature(
            f"tools[{i}] is a {kind!r} server tool; callgate serves custom tools only", param=f"tools[{i}].type"
        )
    tool = parse_as(CustomTool, raw, f"tools[{i}]")
    return ToolDef(
        type="function",
        function=FunctionDef(
            name=tool.name, description=tool.description, parameters=tool.input_schema, strict=tool.strict
        ),
    )


def _tool_choice(choice: ToolChoiceParam | None) -> str | NamedToolChoice | None:
    if choice is None:
        return None
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest('tool_choice of type "tool" needs a name', param="tool_choice.name")
        return NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _effort(thinking: ThinkingParam | None) -> str | None:
    """Thinking on / off drives the template's thinking switch, as reasoning_effort does."""
    if thinking is None:
        return None
    return "none" if thinking.type == "disabled" else "medium"
