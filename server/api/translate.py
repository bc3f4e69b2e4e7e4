"""Wire request -> ChatRequest: the one place OpenAI's shapes become the gateway's types,
and where request-level rules (limits, history coherence, neutral-only fields) are checked.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from server.api.wire import ChatCompletionRequest, MessageWire, NamedToolChoice, ResponseFormat, ToolDef
from server.chat import ChatRequest
from server.config import LimitsSection
from server.constraints.spec import check_choice, check_tools, check_valid_schema
from server.errors import InvalidRequest, UnsupportedFeature
from server.limits import depth
from server.types import ChoiceMode, Message, Sampling, TextFormat, Tool, ToolCall, ToolChoice

_EMPTY_OBJECT = {"type": "object", "properties": {}}
M = TypeVar("M", bound=BaseModel)


def to_chat_request(
    wire: ChatCompletionRequest,
    limits: LimitsSection,
    default_choice: ChoiceMode = ChoiceMode.AUTO,
    thinking_switch: bool = False,
) -> ChatRequest:
    """`default_choice` applies when tools come without tool_choice (an adapter's manifest sets it);
    `thinking_switch`: the model's template has one, which reasoning_effort then sets."""
    _refuse_unsupported(wire)
    tools = to_tools(wire.tools or [], limits)
    return ChatRequest(
        messages=to_messages(wire.messages, limits),
        tools=tools,
        choice=_choice(wire, tools, default_choice),
        parallel=wire.parallel_tool_calls is not False,
        text=_text_format(wire.response_format),
        sampling=_sampling(wire, limits),
        no_tool_threshold=wire.no_tool_threshold,
        thinking=_thinking(wire.reasoning_effort) if thinking_switch else None,
    )


def _thinking(effort: str | None) -> bool | None:
    """Effort on a model with a thinking switch: "none" / "minimal" turn thinking off, any other
    effort on; unset keeps the template's default. Models without one have no effort to set."""
    return None if effort is None else effort not in ("none", "minimal")


def to_messages(wire: list[MessageWire], limits: LimitsSection) -> tuple[Message, ...]:
    if len(wire) > limits.max_messages:
        raise InvalidRequest(f"{len(wire)} messages; the limit is {limits.max_messages}", param="messages")
    open_calls: set[str] = set()
    out = []
    for i, m in enumerate(wire):
        calls = tuple(
            _call(i, j, c.id, c.function.name, c.function.arguments, limits.max_json_depth)
            for j, c in enumerate(m.tool_calls or [])
        )
        open_calls.update(c.id for c in calls)
        if m.role == "tool":
            check_answers(str(m.tool_call_id), open_calls, f"messages[{i}].tool_call_id")
        if m.content is None and m.role != "assistant":
            raise InvalidRequest(f"messages[{i}] ({m.role}) has no content", param=f"messages[{i}].content")
        role = "system" if m.role == "developer" else m.role
        out.append(Message(role, _text(m), calls, m.tool_call_id, m.name))
    return tuple(out)


def to_tools(wire: list[ToolDef], limits: LimitsSection) -> tuple[Tool, ...]:
    if len(wire) > limits.max_tools:
        raise InvalidRequest(f"{len(wire)} tools; the limit is {limits.max_tools}", param="tools")
    # Every call is validated against its tool's schema, `strict` or not.
    tools = tuple(
        Tool(
            t.function.name,
            t.function.description or "",
            t.function.parameters if t.function.parameters is not None else dict(_EMPTY_OBJECT),
        )
        for t in wire
    )
    check_tools(tools)
    return tools


def _call(i: int, j: int, call_id: str, name: str, arguments: str, max_depth: int) -> ToolCall:
    check_arguments(arguments, f"messages[{i}].tool_calls[{j}].function.arguments", max_depth)
    return ToolCall(name=name, arguments=arguments or "{}", id=call_id)


def _text(m: MessageWire) -> str | None:
    if isinstance(m.content, list):
        return "".join(part.text for part in m.content)
    return m.content


def _choice(wire: ChatCompletionRequest, tools: tuple[Tool, ...], default: ChoiceMode) -> ToolChoice:
    choice = wire.tool_choice
    if choice is None:
        return ToolChoice(default if tools else ChoiceMode.NONE)
    if isinstance(choice, NamedToolChoice):
        resolved = ToolChoice(ChoiceMode.NAMED, choice.function.name)
    else:
        resolved = ToolChoice(ChoiceMode(choice))
    check_choice(resolved, [t.name for t in tools])
    return resolved


def _text_format(fmt: ResponseFormat | None) -> TextFormat:
    if fmt is None or fmt.type == "text":
        return TextFormat()
    if fmt.type == "json_object":
        return TextFormat("json_object")
    if fmt.json_schema is None:
        raise InvalidRequest("response_format json_schema needs a json_schema object", param="response_format")
    check_valid_schema(fmt.json_schema.schema_, "response_format.json_schema.schema", "response_format")
    return TextFormat("json_schema", fmt.json_schema.schema_)


def _sampling(wire: ChatCompletionRequest, limits: LimitsSection) -> Sampling:
    max_tokens = wire.max_completion_tokens or wire.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise InvalidRequest(f"max_tokens {max_tokens} is above the limit of {limits.max_tokens}", param="max_tokens")
    stop = (wire.stop,) if isinstance(wire.stop, str) else tuple(wire.stop or ())
    if len(stop) > 16:
        raise InvalidRequest("at most 16 stop sequences", param="stop")
    return Sampling(
        max_tokens=max_tokens,
        temperature=1.0 if wire.temperature is None else wire.temperature,
        top_p=1.0 if wire.top_p is None else wire.top_p,
        seed=wire.seed,
        stop=stop,
    )


def _refuse_unsupported(wire: ChatCompletionRequest) -> None:
    neutral = {
        "n": wire.n in (None, 1),
        "logprobs": not wire.logprobs,
        "top_logprobs": not wire.top_logprobs,
        "frequency_penalty": not wire.frequency_penalty,
        "presence_penalty": not wire.presence_penalty,
        "logit_bias": not wire.logit_bias,
    }
    for field, ok in neutral.items():
        if not ok:
            raise UnsupportedFeature(f"{field} is not supported by callgate; omit it", param=field)


def parse_as(model: type[M], raw: object, param: str) -> M:
    """One part of a body (an input item, a content block, a tool) parsed by its type; a 400
    naming where it is wrong, instead of a union's guess at what it meant."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join([param, *(str(p) for p in first["loc"])])
        raise InvalidRequest(f"{where}: {first['msg']}", param=where) from None


def check_answers(call_id: str, made: set[str], param: str) -> None:
    """A tool result must answer a call made earlier in the conversation."""
    if call_id not in made:
        raise InvalidRequest(
            f"{param} is a tool result for call id {call_id!r}, but no earlier assistant turn made a call with that id",
            param=param,
        )


def check_arguments(arguments: str, param: str, max_depth: int | None = None) -> None:
    """A 400 naming `param` unless `arguments` is JSON nested at most `max_depth` levels."""
    try:
        nesting = depth(json.loads(arguments or "{}"))
    except json.JSONDecodeError:
        raise InvalidRequest(f"{param} is not JSON", param=param) from None
    except RecursionError:  # json's decoder recurses: past ~1000 levels it gives up at once
        nesting = None
    if nesting is None or (max_depth is not None and nesting > max_depth):
        limit = f"{max_depth} levels (limits.max_json_depth)" if max_depth is not None else "what JSON allows here"
        raise InvalidRequest(f"{param} nests deeper than {limit}; flatten it", param=param, code="json_too_deep")
