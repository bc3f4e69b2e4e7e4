"""The canonical training record: OpenAI chat shapes with arguments as objects, validated.

A record is `{"messages", "tools", "meta"}`; its expected answer is its last assistant message.
Validation checks the shapes (pydantic) and the meaning: tool schemas are valid JSON Schema,
every call names a declared tool with arguments valid for it (except calls marked
`"train": false`, which are wrong on purpose), tool results answer an earlier call. Knows
nothing of where records come from or how trainers tokenize them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server import templates
from server.adapters.manifest import atomic_write_text
from server.toolcalls.base import ParsedCall
from server.toolcalls.validation import check_schema, validate_call
from server.types import Message, Tool, ToolCall

Kind = Literal[
    "single", "parallel", "multi_turn", "no_tool_irrelevant", "no_tool_chitchat", "clarify", "error_recovery"
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
NEGATIVE_KINDS = frozenset({"no_tool_irrelevant", "no_tool_chitchat", "clarify"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Any]


class ToolCallSpec(_Strict):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCallSpec] | None = None
    tool_call_id: str | None = None
    train: bool | None = None  # assistant only: False keeps the message out of the loss

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.role != "assistant" and (self.tool_calls or self.train is not None):
            raise ValueError(f"only assistant messages carry tool_calls or train (got a {self.role} message)")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool messages, and only they, carry tool_call_id")
        return self


class FunctionSpec(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(_Strict):
    type: Literal["function"] = "function"
    function: FunctionSpec


class Meta(BaseModel):
    model_config = ConfigDict(extra="allow")  # source-specific fields (possible_answers, template ids...)

    id: str
    kind: Kind
    source: str


class Record(_Strict):
    messages: list[ChatMessage] = Field(min_length=2)
    tools: list[ToolSpec] = Field(default_factory=list)
    meta: Meta

    @model_validator(mode="after")
    def _meaning(self) -> Record:
        problem = _tools_problem(self.tools) or _messages_problem(self.messages, self.tools)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def answer(self) -> ChatMessage:
        """The expected answer: the last message (always an assistant's)."""
        return self.messages[-1]

    @property
    def kind(self) -> str:
        return self.meta.kind

    def tool_names(self) -> list[str]:
        return [t.function.name for t in self.tools]


def _tools_problem(tools: Sequence[ToolSpec]) -> str | None:
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        return f"duplicate tool names: {sorted(n for n, c in Counter(names).items() if c > 1)}"
    for tool in tools:
        params = tool.function.parameters
        if params.get("type", "object") != "object":
            return f"tool {tool.function.name!r}: parameters must be an object schema"
        problem = check_schema(params)
        if problem:
            return f"tool {tool.function.name!r}: invalid JSON Schema {problem}"
    return None


def _messages_problem(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> str | None:
    if any(m.role == "system" for m in messages[1:]):
        return "a system message may only come first"
    if not any(m.role == "user" for m in messages):
        return "no user message"
    if messages[-1].role != "assistant":
        return "the last message must be the assistant's answer"
    declared = {t.function.name: _tool(t) for t in tools}
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        if message.role == "tool" and message.tool_call_id not in call_ids:
            return f"message {i}: tool_call_id {message.tool_call_id!r} answers no earlier call"
        for call in message.tool_calls or ():
            if call.id in call_ids:
                return f"message {i}: duplicate tool call id {call.id!r}"
            call_ids.add(call.id)
            problem = _call_problem(call.function, declared, checked=message.train is not False)
            if problem:
                return f"message {i}: {problem}"
    return None


def _call_problem(call: FunctionCall, declared: dict[str, Tool], checked: bool) -> str | None:
    if call.name not in declared:
        return f"call of undeclared tool {call.name!r}"
    if not checked:
        return None  # a deliberately wrong call (error-recovery traces), kept out of the loss
    return validate_call(ParsedCall(call.name, json.dumps(call.arguments)), declared)


def _tool(spec: ToolSpec) -> Tool:
    return Tool(spec.function.name, spec.function.description, spec.function.parameters)


# ---- errors, (de)serialisation ----------------------------------------------------------------


@dataclass(frozen=True)
class BadRecord:
    where: str  # "line 12", "index 3", "row 7"
    reason: str


@dataclass
class BadRecords:
    """Skipped inputs with their reasons: counted and reported, never raised."""

    items: list[BadRecord] = field(default_factory=list)
    examples_kept: int = 20

    def add(self, where: str, reason: str) -> None:
        self.items.append(BadRecord(where, reason))

    def extend(self, other: BadRecords) -> None:
        self.items.extend(other.items)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> dict[str, Any]:
        """{"count", "by_reason": {reason head: n}, "examples": [{"where", "reason"}...]}."""
        heads = Counter(_reason_head(b.reason) for b in self.items)
        examples = [{"where": b.where, "reason": b.reason} for b in self.items[: self.examples_kept]]
        return {"count": len(self.items), "by_reason": dict(heads.most_common()), "examples": examples}


def _reason_head(reason: str) -> str:
    # "message 3: call of undeclared tool 'x'" -> "call of undeclared tool"
    for part in reason.split(": "):
        if not part.startswith("message ") and not part.startswith("tool "):
            return part.split("'")[0].split('"')[0].strip(" ,:") or part
    return reason


def validation_reason(exc: ValidationError) -> str:
    """The first error of a pydantic failure, as one line: where, then what."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def parse_record(obj: Any) -> Record:
    """A record from decoded JSON; raises pydantic.ValidationError when it is not valid."""
    return Record.model_validate(obj)


def to_json(record: Record) -> dict[str, Any]:
    out = record.model_dump(mode="json", exclude_none=True)
    for message in out["messages"]:
        message.setdefault("content", None)  # OpenAI's shape keeps an explicit null
    return out


def dumps(record: Record) -> str:
    return json.dumps(to_json(record), ensure_ascii=False)


def write_records(path: Path, records: Iterable[Record]) -> Path:
    """JSONL, written atomically (temp file then rename)."""
    return atomic_write_text(path, "".join(dumps(r) + "\n" for r in records))


def read_records(path: Path) -> tuple[list[Record], BadRecords]:
    """Every valid record of a JSONL file; bad lines are reported, never raised."""
    records: list[Record] = []
    bad = BadRecords()
    for where, outcome in iter_jsonl_records(path):
        if isinstance(outcome, Record):
            records.append(outcome)
        else:
            bad.add(where, outcome)
    return records, bad


def iter_jsonl_records(path: Path) -> Iterator[tuple[str, Record | str]]:
    """(where, record or reason) for each non-blank line."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                yield where, parse_record(json.loads(line))
            except json.JSONDecodeError as exc:
                yield where, f"invalid JSON: {exc.msg}"
            except ValidationError as exc:
                yield where, validation_reason(exc)


# ---- views for the server's tool-call core -----------------------------------------------------


def server_tools(record: Record) -> list[Tool]:
    return [_tool(t) for t in record.tools]


def server_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    return [
        Message(
            role=m.role,
            content=m.content,
            tool_calls=tuple(
                ToolCall(c.function.name, json.dumps(c.function.arguments, ensure_ascii=False), c.id)
                for c in m.tool_calls or ()
            ),
            tool_call_id=m.tool_call_id,
        )
        for m in messages
    ]


def render_record(
    record: Record, template: str, *, upto: int | None = None, add_generation_prompt: bool = False
) -> str:
    """The record (or its first `upto` messages) as text under a chat template."""
    messages = record.messages if upto is None else record.messages[:upto]
    return templates.render(
        template, server_messages(messages), server_tools(record), add_generation_prompt=add_generation_prompt
    )
