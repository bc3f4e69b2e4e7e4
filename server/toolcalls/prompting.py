"""The prompt for a conversation with tools, for every chat template: templates with a tool
section render the tools themselves; for those without one (SmolLM2, Gemma 3, base models), the
tools would silently vanish from the prompt, so they go into a system message here, with the
answer shape in the model's tool-call format (as llama.cpp's generic handler does), and the
history is rewritten in terms such a template can show: assistant calls and answers in the format's own
shape, tool results as user turns. The gateway and training both render through `render_chat`, so what
is trained is what is served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache

from server.templates import render
from server.toolcalls import get_format
from server.toolcalls.base import ToolFormat
from server.toolcalls.detect import detect_format, renders_tools
from server.types import Message, Tool, ToolCall

EXAMPLE = ToolCall(name="TOOL_NAME", arguments='{"ARGUMENT": "VALUE"}')


def render_chat(
    template: str,
    fmt: ToolFormat,
    messages: Sequence[Message],
    tools: Sequence[Tool] = (),
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    enable_thinking: bool | None = None,
    specials: frozenset[str] = frozenset(),
) -> str:
    """`render`, with the tools written into the prompt when the template has no place for them."""
    if not renders_tools(template):
        messages = with_tool_prompt(messages, tools, fmt)
        tools = ()
    return render(
        template,
        messages,
        tools,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        enable_thinking=enable_thinking,
        specials=specials,
    )


@lru_cache(maxsize=32)
def detected_format(template: str) -> ToolFormat:
    """The format `template` speaks, as the gateway detects it (for callers with no configured one)."""
    return get_format(detect_format(template).format)


def with_tool_prompt(messages: Sequence[Message], tools: Sequence[Tool], fmt: ToolFormat) -> list[Message]:
    """`messages` for a template that shows neither tools nor calls (see module doc)."""
    out = [_plain(m, fmt) for m in messages]
    if not tools:
        return out
    prompt = tool_prompt(tuple(tools), fmt)
    if out and out[0].role == "system":
        return [Message("system", f"{out[0].content or ''}\n\n{prompt}".lstrip()), *out[1:]]
    return [Message("system", prompt), *out]


def tool_prompt(tools: tuple[Tool, ...], fmt: ToolFormat) -> str:
    keys = tuple((t.name, t.description, json.dumps(t.parameters, ensure_ascii=False)) for t in tools)
    return _tool_prompt(keys, fmt)


@lru_cache(maxsize=256)
def _tool_prompt(tools: tuple[tuple[str, str, str], ...], fmt: ToolFormat) -> str:
    listing = "\n".join(
        json.dumps({"name": name, "description": description, "parameters": json.loads(parameters)}, ensure_ascii=False)
        for name, description, parameters in tools
    )
    answer = fmt.render("...", [])
    text_line = "" if answer == "..." else f"\nOtherwise answer the user in this shape: {answer}"
    return (
        "You have access to these tools (parameters as JSON Schema):\n"
        f"{listing}\n\n"
        "If a tool can help, call it by replying with only this, TOOL_NAME being one of the tools above and "
        "the arguments following its parameters:\n"
        f"{fmt.render(None, [EXAMPLE])}"
        f"{text_line}"
    )


def prompt_sha256(template: str, fmt: ToolFormat) -> str | None:
    """The wording this module gives `template` in `fmt`, as one digest: the tool prompt around a
    fixed tool, and the history rewrites; None for a template with its own tool section (the
    wording is then the template's). An adapter is trained on that wording and records the digest
    (its manifest's tool_prompt_sha256): served under other wording it is out of its training
    distribution (a two-call example added to the tool prompt took the SmolLM2 support adapter's
    false calls from 0.018 to 0.218, docs/demo.md)."""
    if renders_tools(template):
        return None
    probe = Tool("TOOL", "DESCRIPTION", {"type": "object", "properties": {"ARGUMENT": {"type": "string"}}})
    history = (
        Message("assistant", None, (EXAMPLE,)),
        Message("tool", "RESULT", name="TOOL"),
        Message("assistant", "ANSWER"),
    )
    parts = [tool_prompt((probe,), fmt), *(_plain(m, fmt).content or "" for m in history)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _plain(message: Message, fmt: ToolFormat) -> Message:
    if message.tool_calls:
        return Message("assistant", fmt.render(message.content, message.tool_calls))
    if message.role == "assistant" and message.content is not None:
        # Text answers in the format's text shape too (json_envelope: {"response": ...}): the tool
        # prompt asks for it and `auto`'s grammar holds text to it, so a model trained on plain
        # text was pushed into the envelope's `{"` and from there into a call.
        return Message("assistant", fmt.render(message.content, []))
    if message.role == "tool":
        who = f" of {message.name}" if message.name else ""
        return Message("user", f"Result{who}: {message.content or ''}")
    return message
