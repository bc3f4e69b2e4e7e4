"""ChatEvents -> Chat Completions bodies and SSE chunks, and `sse_json`, the one SSE data-line
encoder every API's writer uses (responses_events.py, messages_events.py hold the other two)."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from server.chat import CallEvent, ChatEvent, ContentEvent, DoneEvent, InvalidCall
from server.errors import GatewayError


@dataclass
class AnswerHeader:
    """The id, model and timestamp shared by every chunk of one answer."""

    model: str
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))


def completion(env: AnswerHeader, events: list[ChatEvent]) -> dict[str, Any]:
    text = "".join(e.text for e in events if isinstance(e, ContentEvent))
    calls = [_tool_call(e) for e in events if isinstance(e, CallEvent)]
    done = next(e for e in events if isinstance(e, DoneEvent))
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if done.invalid_calls:
        message["invalid_tool_calls"] = [_invalid(c) for c in done.invalid_calls]
    return {
        "id": env.id,
        "object": "chat.completion",
        "created": env.created,
        "model": env.model,
        "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason, "logprobs": None}],
        "usage": _usage(done),
    }


class ChunkWriter:
    """SSE lines for one streamed answer, in OpenAI's chunk order."""

    def __init__(self, env: AnswerHeader, include_usage: bool):
        self.env = env
        self.include_usage = include_usage

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: ChatEvent) -> bytes:
        if isinstance(event, ContentEvent):
            return self._chunk({"content": event.text})
        if isinstance(event, CallEvent):
            head = {
                "index": event.index,
                "id": event.call.id,
                "type": "function",
                "function": {"name": event.call.name, "arguments": ""},
            }
            body = {"index": event.index, "function": {"arguments": event.call.arguments}}
            return self._chunk({"tool_calls": [head]}) + self._chunk({"tool_calls": [body]})
        return self._done(event)

    def error(self, exc: GatewayError) -> bytes:
        return sse_json(exc.to_dict()) + b"data: [DONE]\n\n"

    def _done(self, done: DoneEvent) -> bytes:
        delta: dict[str, Any] = {}
        if done.invalid_calls:
            delta["invalid_tool_calls"] = [_invalid(c) for c in done.invalid_calls]
        out = self._chunk(delta, finish_reason=done.finish_reason)
        if self.include_usage:
            out += sse_json({**self._head(), "choices": [], "usage": _usage(done)})
        return out + b"data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body = {
            **self._head(),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            body["usage"] = None
        return sse_json(body)

    def _head(self) -> dict[str, Any]:
        return {
            "id": self.env.id,
            "object": "chat.completion.chunk",
            "created": self.env.created,
            "model": self.env.model,
        }


# Characters str.splitlines() breaks on that JSON leaves raw: clients that split SSE lines that
# way (httpx's iter_lines, hence LangChain and others) would cut an event in two. Escaped, the
# JSON means the same and every data line stays one line.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse_json(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).translate(_LINE_BREAKS).encode() + b"\n\n"


def _tool_call(event: CallEvent) -> dict[str, Any]:
    call = event.call
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _invalid(call: InvalidCall) -> dict[str, Any]:
    return {"name": call.name, "arguments": call.arguments, "error": call.error}


def _usage(done: DoneEvent) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def segments(events: list[ChatEvent]) -> list[str | CallEvent]:
    """The answer in order: consecutive text joined into one string, each call on its own (the
    shape the Responses and Messages bodies both list)."""
    out: list[str | CallEvent] = []
    for event in events:
        if isinstance(event, ContentEvent):
            if out and isinstance(out[-1], str):
                out[-1] += event.text
            else:
                out.append(event.text)
        elif isinstance(event, CallEvent):
            out.append(event)
    return out
