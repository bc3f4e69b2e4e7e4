"""Anthropic Messages API wire models (POST /v1/messages, /v1/messages/count_tokens).

Text, tool_use and tool_result blocks; custom (function) tools. Content blocks and tools are
kept as objects here and parsed by their `type` in messages_api.py, so a 400 can name a block
or a server tool callgate cannot take. Unknown top-level fields are refused here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.api.wire import TOOL_NAME

_STRICT = ConfigDict(extra="forbid")
# Blocks and tools carry more than callgate reads (cache_control, citations, input_examples...).
_LOOSE = ConfigDict(extra="allow")


class AnthropicMessage(BaseModel):
    model_config = _STRICT
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class TextBlock(BaseModel):
    model_config = _LOOSE
    type: Literal["text"]
    text: str


class ToolUseBlock(BaseModel):
    model_config = _LOOSE
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(BaseModel):
    model_config = _LOOSE
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[dict[str, Any]] = ""
    is_error: bool | None = None


class CustomTool(BaseModel):
    model_config = _LOOSE
    type: Literal["custom"] | None = None
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    input_schema: dict[str, Any]
    strict: bool | None = None


class ToolChoiceParam(BaseModel):
    model_config = _STRICT
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingParam(BaseModel):
    model_config = _STRICT
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: str | None = None


class JsonOutputFormat(BaseModel):
    model_config = _STRICT
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = _STRICT
    effort: str | None = None  # a hint to Claude models; nothing here acts on it
    format: JsonOutputFormat | None = None


class CountTokensRequest(BaseModel):
    model_config = _STRICT

    model: str
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfig | None = None
    cache_control: dict[str, Any] | None = None  # prompt caching hints: accepted, ignored


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stream: bool | None = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None  # refused unless absent (messages_api.py)
    # Bookkeeping that changes nothing about the answer: accepted and ignored.
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    # callgate extensions.
    seed: int | None = Field(None, ge=0, lt=2**63)
    no_tool_threshold: float | None = Field(None, ge=0, le=1)
