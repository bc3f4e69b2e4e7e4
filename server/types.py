"""The gateway's internal vocabulary: plain dataclasses shared by every layer.

Wire models (api/wire.py) are translated into these once, at the edge; nothing here knows
about HTTP, OpenAI's JSON shapes or any engine.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Any

JSONSchema = dict[str, Any]


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is a JSON Schema for its arguments."""

    name: str
    description: str = ""
    parameters: JSONSchema = field(default_factory=lambda: {"type": "object", "properties": {}})


class ChoiceMode(enum.StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = ChoiceMode.AUTO
    name: str | None = None  # set only for NAMED

    @property
    def label(self) -> str:
        """The mode as a metrics label (never the function name: unbounded cardinality)."""
        return self.mode.value


@dataclass(frozen=True)
class ToolCall:
    """A parsed call. `arguments` is the JSON text exactly as generated (or rendered)."""

    name: str
    arguments: str
    id: str = ""


@dataclass(frozen=True)
class Message:
    """One chat message in the shape chat templates expect (transformers semantics)."""

    role: str
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class TextFormat:
    """How free text is constrained: plain text, any JSON object, or a JSON Schema."""

    kind: str = "text"  # "text" | "json_object" | "json_schema"
    schema: JSONSchema | None = None


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Outcome(enum.StrEnum):
    """What happened to one tool call (or to a request that made none); a metrics label."""

    VALID = "valid"
    REPAIRED = "repaired"  # valid after a bounded retry
    INVALID = "invalid"
    TRUNCATED = "truncated"
    NO_TOOL = "no_tool"


class Cancel:
    """Set by the gateway when the client goes away; engines check it between tokens."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()
