"""OpenAI wire models for /v1/chat/completions, validated at the edge.

Unknown fields are refused (400 naming them) rather than silently ignored; fields OpenAI
defines that callgate does not implement are accepted only at their neutral value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")
# OpenAI allows [a-zA-Z0-9_-]{1,64}; dots are admitted too because BFCL's functions use them.
TOOL_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class FunctionDef(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: str
    arguments: str


class ToolCallWire(BaseModel):
    model_config = _STRICT
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class MessageWire(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    # What `message.model_dump()` of a response carries back as history: nulls that ask for
    # nothing (OpenAI accepts them), and annotations / invalid calls, which prompts never show.
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None
    invalid_tool_calls: list[Any] | None = None


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: str


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = _STRICT

    model: str
    messages: list[MessageWire] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # Defined by OpenAI, accepted only at their neutral values (checked in translate.py).
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Bookkeeping fields that change nothing about the answer.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Hints: effort drives the template's thinking switch where it has one (translate.py);
    # verbosity is accepted and not acted on (a length hint; max_tokens is the bound).
    reasoning_effort: Effort | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    # callgate extension (send with the openai client's extra_body).
    no_tool_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="auto mode: call a tool only if P(opening a call) reaches this",
    )


class ApplyTemplateRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    messages: list[MessageWire] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    add_generation_prompt: bool = True
