"""POST /v1/responses: the OpenAI Responses API, translated at the edge onto the chat core.

A Responses body becomes the chat-completions body it means (instructions -> system message,
function_call items -> an assistant's tool_calls, function_call_output -> tool messages), then
goes the chat route's one way in (`prepare`), so tool_choice, validation, retries, limits and
metrics are the chat core's. Stateless: `store` is always false, `previous_response_id` a 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from server.api.chat_routes import prepare
from server.api.delivery import deliver
from server.api.deps import GatewayDep, InferenceDep
from server.api.responses_events import ResponsesRender
from server.api.responses_wire import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    MessageItem,
    NamedFunction,
    Part,
    ResponsesRequest,
    TextParam,
)
from server.api.translate import check_answers, check_arguments, parse_as
from server.api.wire import (
    ChatCompletionRequest,
    FunctionCall,
    FunctionDef,
    JsonSchemaFormat,
    MessageWire,
    NamedToolChoice,
    ResponseFormat,
    ToolCallWire,
    ToolDef,
)
from server.api.wire import NamedFunction as ChatNamedFunction
from server.errors import InvalidRequest, UnsupportedFeature

router = APIRouter(dependencies=[InferenceDep])
_TEXT_PARTS = ("input_text", "output_text", "text")


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request, gw: GatewayDep) -> Response:
    served, chat = await prepare(to_chat_wire(body), request, gw)
    return await deliver(request, gw, served, chat, bool(body.stream), ResponsesRender(served.name, body))


def to_chat_wire(body: ResponsesRequest) -> ChatCompletionRequest:
    _refuse_unsupported(body)
    messages = _messages(body)
    if not messages:
        raise InvalidRequest("input has no items; send at least one message", param="input")
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=messages,
            tools=[_tool(i, t) for i, t in enumerate(body.tools or [])] or None,
            tool_choice=_tool_choice(body.tool_choice),
            parallel_tool_calls=body.parallel_tool_calls,
            max_completion_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            response_format=_format(body.text),
            reasoning_effort=body.reasoning.effort if body.reasoning else None,
            verbosity=body.text.verbosity if body.text else None,
            no_tool_threshold=body.no_tool_threshold,
        )
    except ValidationError as exc:  # rendered like any other invalid body
        raise RequestValidationError(exc.errors()) from None


def _refuse_unsupported(body: ResponsesRequest) -> None:
    stateless = "callgate is stateless (store is always false): send the whole conversation in `input`"
    if body.previous_response_id is not None:
        raise InvalidRequest(f"previous_response_id cannot be resolved; {stateless}", param="previous_response_id")
    if body.conversation is not None:
        raise InvalidRequest(f"conversations are not kept; {stateless}", param="conversation")
    refused = {
        "prompt": (body.prompt is not None, "stored prompts are not served; send instructions and input"),
        "background": (bool(body.background), "background responses need a store; omit background"),
        "max_tool_calls": (
            body.max_tool_calls is not None,
            "not enforced; use parallel_tool_calls: false for at most one call",
        ),
        "top_logprobs": (bool(body.top_logprobs), "logprobs are not returned; omit top_logprobs"),
    }
    for field, (bad, why) in refused.items():
        if bad:
            raise UnsupportedFeature(f"{field}: {why}", param=field)


def _messages(body: ResponsesRequest) -> list[MessageWire]:
    out = [MessageWire(role="system", content=body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        return [*out, MessageWire(role="user", content=body.input)]
    made: set[str] = set()  # call ids so far: checked here, so a 400 names the input item
    for i, raw in enumerate(body.input):
        kind = raw.get("type", "message")
        if kind == "message":
            item = parse_as(MessageItem, raw, f"input[{i}]")
            out.append(MessageWire(role=item.role, content=_text(item.content, f"input[{i}].content")))
        elif kind == "function_call":
            call = parse_as(FunctionCallItem, raw, f"input[{i}]")
            check_arguments(call.arguments, f"input[{i}].arguments")
            made.add(call.call_id)
            out = _with_call(
                out, ToolCallWire(id=call.call_id, function=FunctionCall(name=call.name, arguments=call.arguments))
            )
        elif kind == "function_call_output":
            result = parse_as(FunctionCallOutputItem, raw, f"input[{i}]")
            check_answers(result.call_id, made, f"input[{i}].call_id")
            out.append(
                MessageWire(
                    role="tool", tool_call_id=result.call_id, content=_text(result.output, f"input[{i}].output")
                )
            )
        elif kind != "reasoning":  # callgate never returns reasoning items; replayed ones are dropped
            raise UnsupportedFeature(
                f"input[{i}] is a {kind!r} item; callgate takes message, function_call, "
                "function_call_output (and ignores reasoning) items",
                param=f"input[{i}].type",
            )
    return out


def _with_call(messages: list[MessageWire], call: ToolCallWire) -> list[MessageWire]:
    """Consecutive function_call items (and the assistant text before them) are one assistant turn."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        merged = last.model_copy(update={"tool_calls": [*(last.tool_calls or []), call]})
        return [*messages[:-1], merged]
    return [*messages, MessageWire(role="assistant", content=None, tool_calls=[call])]


def _text(content: str | list[Part], param: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type in _TEXT_PARTS and part.text is not None:
            texts.append(part.text)
        elif part.type == "refusal" and part.refusal is not None:
            texts.append(part.refusal)
        else:
            raise UnsupportedFeature(
                f"{param}[{j}] is a {part.type!r} part; only text parts are served", param=f"{param}[{j}]"
            )
    return "".join(texts)


def _tool(i: int, raw: dict[str, Any]) -> ToolDef:
    kind = raw.get("type")
    if kind != "function":
        raise UnsupportedFeature(
            f"tools[{i}] is a {kind!r} tool; callgate serves function tools only", param=f"tools[{i}].type"
        )
    tool = parse_as(FunctionTool, raw, f"tools[{i}]")
    return ToolDef(
        type="function",
        function=FunctionDef(
            name=tool.name, description=tool.description, parameters=tool.parameters, strict=tool.strict
        ),
    )


def _tool_choice(choice: object) -> str | NamedToolChoice | None:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        named = parse_as(NamedFunction, choice, "tool_choice")
        return NamedToolChoice(type="function", function=ChatNamedFunction(name=named.name))
    kind = choice.get("type") if isinstance(choice, dict) else type(choice).__name__
    raise UnsupportedFeature(
        f'tool_choice of type {kind!r} is not served; use auto, none, required or {{"type": "function", "name": ...}}',
        param="tool_choice",
    )


def _format(text: TextParam | None) -> ResponseFormat | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type != "json_schema":
        return ResponseFormat(type=fmt.type) if fmt else None
    if fmt.schema_ is None:
        raise InvalidRequest("text.format of type json_schema needs a schema", param="text.format.schema")
    return ResponseFormat(
        type="json_schema",
        json_schema=JsonSchemaFormat(
            name=fmt.name or "response", description=fmt.description, schema_=fmt.schema_, strict=fmt.strict
        ),
    )
