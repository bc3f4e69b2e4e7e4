"""ChatEvents -> Anthropic Messages objects: the `message` body and its SSE event grammar.

Text becomes `text` blocks, each call a `tool_use` block (its arguments as the `input` object).
The stream is message_start, ping, per block content_block_start / _delta / _stop, message_delta
(stop_reason, usage), message_stop: built from the same events, in the same order, as the JSON body.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from server.api.errors import anthropic_error
from server.api.responses import segments, sse_json
from server.chat import CallEvent, ChatEvent, ContentEvent, DoneEvent
from server.errors import GatewayError

# The gateway's finish reasons in Anthropic's words. A stop sequence reads as end_turn: the
# engine does not say whether a stop string or the end of turn ended the answer.
_STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens", "stop": "end_turn"}


@dataclass
class MessagesRender:
    model: str
    id: str = field(default_factory=lambda: "msg_" + secrets.token_hex(12))

    def body(self, events: list[ChatEvent]) -> dict[str, Any]:
        done = next(e for e in events if isinstance(e, DoneEvent))
        return {
            **self.head(),
            "content": content_blocks(events),
            "stop_reason": stop_reason(done),
            "usage": usage(done),
        }

    def writer(self) -> MessagesWriter:
        return MessagesWriter(self)

    def head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }


def content_blocks(events: list[ChatEvent]) -> list[dict[str, Any]]:
    """Consecutive text is one text block; each call a tool_use block."""
    return [
        {"type": "text", "text": part} if isinstance(part, str) else tool_use(part, json.loads(part.call.arguments))
        for part in segments(events)
    ]


def tool_use(event: CallEvent, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": event.call.id, "name": event.call.name, "input": arguments}


def stop_reason(done: DoneEvent) -> str:
    return _STOP_REASONS.get(done.finish_reason, "end_turn")


def usage(done: DoneEvent) -> dict[str, int]:
    return {
        "input_tokens": done.prompt_tokens,
        "output_tokens": done.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


class MessagesWriter:
    def __init__(self, render: MessagesRender):
        self.render = render
        self.blocks = 0  # content blocks opened so far
        self.open = False  # a text block is open

    def start(self) -> bytes:
        message = {**self.render.head(), "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _event("message_start", message=message) + _event("ping")

    def event(self, event: ChatEvent) -> bytes:
        if isinstance(event, ContentEvent):
            return self._open_text() + _event(
                "content_block_delta", index=self.blocks - 1, delta={"type": "text_delta", "text": event.text}
            )
        if isinstance(event, CallEvent):
            closed = self._close_text()
            index = self.blocks
            self.blocks += 1
            return (
                closed
                + _event("content_block_start", index=index, content_block=tool_use(event, {}))
                + _event(
                    "content_block_delta",
                    index=index,
                    delta={"type": "input_json_delta", "partial_json": event.call.arguments},
                )
                + _event("content_block_stop", index=index)
            )
        return (
            self._close_text()
            + _event(
                "message_delta", delta={"stop_reason": stop_reason(event), "stop_sequence": None}, usage=usage(event)
            )
            + _event("message_stop")
        )

    def error(self, exc: GatewayError) -> bytes:
        return b"event: error\n" + sse_json(anthropic_error(exc))

    def _open_text(self) -> bytes:
        if self.open:
            return b""
        self.open = True
        self.blocks += 1
        return _event("content_block_start", index=self.blocks - 1, content_block={"type": "text", "text": ""})

    def _close_text(self) -> bytes:
        if not self.open:
            return b""
        self.open = False
        return _event("content_block_stop", index=self.blocks - 1)


def _event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\n".encode() + sse_json({"type": kind, **fields})
