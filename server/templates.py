"""Chat-template rendering with the semantics of transformers' `apply_chat_template`.

Templates come from the model (GGUF / tokenizer config) or an operator's file, never from a
request, and run in jinja2's immutable sandbox. Messages are handed to the template as
transformers does: tool calls as `{"type": "function", "function": {"name", "arguments"}}`
with arguments as a mapping (so templates that `tojson` them do not double-encode strings).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.errors import InvalidRequest
from server.plaintext import mark_value
from server.types import Message, Tool


def render(
    template: str,
    messages: Sequence[Message],
    tools: Sequence[Tool] = (),
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    enable_thinking: bool | None = None,
    specials: frozenset[str] = frozenset(),
) -> str:
    """The prompt text for `messages` (and `tools`, when any) under `template`.
    `enable_thinking` reaches templates that have that switch (Qwen3's); None leaves their default.
    With the vocabulary's `specials`, client text that spells one is marked plain (server/plaintext.py)."""
    switch = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    try:
        return _compile(template).render(
            messages=[mark_value(message_dict(m), specials) for m in messages],
            tools=[mark_value(tool_dict(t), specials) for t in tools] or None,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **switch,
        )
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError) as exc:
        # Templates reject conversations they cannot express (e.g. roles out of order).
        raise InvalidRequest(f"the chat template refused these messages: {exc}", param="messages") from None


def thinking_switch(template: str) -> bool:
    """Whether the template reads the `enable_thinking` switch (Qwen3-style `<think>` models)."""
    return "enable_thinking" in template


def message_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def tool_dict(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": function}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # history from elsewhere may hold non-JSON; the template shows it as is


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidRequest(f"chat template does not parse: {exc}") from None


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)
