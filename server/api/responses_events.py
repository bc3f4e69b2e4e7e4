"""ChatEvents -> Responses API objects: the `response` body and its SSE event grammar.

Text becomes `message` output items, each call a `function_call` item. The stream ends with
`response.completed` (or `.incomplete`) carrying the response built by the same function as
the JSON answer from the same events, so the two cannot disagree. Item ids are derived from the
response id and the item's place, so they too are the same both ways.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from server.api.responses import segments, sse_json
from server.api.responses_wire import ResponsesRequest
from server.chat import CallEvent, ChatEvent, ContentEvent, DoneEvent
from server.errors import GatewayError


@dataclass
class ResponsesRender:
    model: str
    request: ResponsesRequest
    token: str = field(default_factory=lambda: secrets.token_hex(12))
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return "resp_" + self.token

    def body(self, events: list[ChatEvent]) -> dict[str, Any]:
        done = next(e for e in events if isinstance(e, DoneEvent))
        status = "incomplete" if done.finish_reason == "length" else "completed"
        return self.response(status, output_items(self.token, events), done)

    def writer(self) -> ResponsesWriter:
        return ResponsesWriter(self)

    def response(self, status: str, output: list[dict[str, Any]], done: DoneEvent | None) -> dict[str, Any]:
        req = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "model": self.model,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions,
            "output": output,
            "tools": req.tools or [],
            "tool_choice": req.tool_choice or "auto",
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "text": {"format": {"type": "text"}}
            if req.text is None or req.text.format is None
            else {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)},
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
            "previous_response_id": None,
            "store": False,
            "truncation": "disabled",
            "metadata": req.metadata or {},
            "user": req.user,
            "usage": _usage(done) if done is not None else None,
        }


def output_items(token: str, events: list[ChatEvent]) -> list[dict[str, Any]]:
    """Consecutive text is one message item; each call is a function_call item."""
    return [
        message_item(token, i, part) if isinstance(part, str) else call_item(token, i, part)
        for i, part in enumerate(segments(events))
    ]


def message_item(token: str, index: int, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {"type": "message", "id": f"msg_{token}_{index}", "status": status, "role": "assistant", "content": content}


def call_item(token: str, index: int, event: CallEvent, status: str = "completed") -> dict[str, Any]:
    call = event.call
    return {
        "type": "function_call",
        "id": f"fc_{token}_{index}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if status == "completed" else "",
        "status": status,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(done: DoneEvent) -> dict[str, Any]:
    return {
        "input_tokens": done.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": done.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


class ResponsesWriter:
    """The Responses SSE grammar: created, in_progress, per item added / deltas / done, completed."""

    def __init__(self, render: ResponsesRender):
        self.render = render
        self.events: list[ChatEvent] = []
        self.seq = 0
        self.items = 0  # output items opened so far
        self.open = False  # a message item is open
        self.text: list[str] = []  # its text so far

    def start(self) -> bytes:
        snapshot = self.render.response("in_progress", [], None)
        return self._emit("response.created", response=snapshot) + self._emit("response.in_progress", response=snapshot)

    def event(self, event: ChatEvent) -> bytes:
        self.events.append(event)
        if isinstance(event, ContentEvent):
            opened = self._open_text()
            self.text.append(event.text)
            return opened + self._emit(
                "response.output_text.delta",
                item_id=self._item_id("msg"),
                output_index=self.items - 1,
                content_index=0,
                delta=event.text,
                logprobs=[],
            )
        if isinstance(event, CallEvent):
            return self._close_text() + self._call(event)
        out = self._close_text()
        body = self.render.body(self.events)
        return out + self._emit(f"response.{body['status']}", response=body)

    def error(self, exc: GatewayError) -> bytes:
        return self._emit("error", code=exc.code, message=exc.message, param=exc.param)

    def _open_text(self) -> bytes:
        if self.open:
            return b""
        self.open, self.text = True, []
        self.items += 1
        index, token = self.items - 1, self.render.token
        item_id = self._item_id("msg")
        return self._emit(
            "response.output_item.added", output_index=index, item=message_item(token, index, "", "in_progress")
        ) + self._emit(
            "response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=_text_part("")
        )

    def _close_text(self) -> bytes:
        if not self.open:
            return b""
        index, item_id, text = self.items - 1, self._item_id("msg"), "".join(self.text)
        self.open = False
        return (
            self._emit(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            + self._emit(
                "response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=_text_part(text),
            )
            + self._emit(
                "response.output_item.done", output_index=index, item=message_item(self.render.token, index, text)
            )
        )

    def _call(self, event: CallEvent) -> bytes:
        index, token = self.items, self.render.token
        self.items += 1
        item_id = self._item_id("fc")
        return (
            self._emit(
                "response.output_item.added", output_index=index, item=call_item(token, index, event, "in_progress")
            )
            + self._emit(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=event.call.arguments,
            )
            + self._emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=event.call.name,
                arguments=event.call.arguments,
            )
            + self._emit("response.output_item.done", output_index=index, item=call_item(token, index, event))
        )

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self.render.token}_{self.items - 1}"

    def _emit(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\n".encode() + sse_json(body)
