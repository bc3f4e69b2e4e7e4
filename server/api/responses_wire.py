"""OpenAI Responses API wire models (POST /v1/responses), validated at the edge.

Function tools and text in, stateless: fields that change nothing (store, metadata, include,
cache keys) are accepted and ignored; fields that need state or features callgate lacks are
refused in responses_api.py with a 400 that names them; unknown fields are refused here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.api.wire import TOOL_NAME, Effort

_STRICT = ConfigDict(extra="forbid")
# Items a client sends back as history carry more than callgate reads (status, ids, logprobs).
_ITEM = ConfigDict(extra="allow")


class FunctionTool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    name: str


class Part(BaseModel):
    """A content part: input_text / output_text / refusal are text; anything else is refused."""

    model_config = _ITEM
    type: str
    text: str | None = None
    refusal: str | None = None


class MessageItem(BaseModel):
    model_config = _ITEM
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]


class FunctionCallItem(BaseModel):
    model_config = _ITEM
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(BaseModel):
    model_config = _ITEM
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[Part]


class TextFormatParam(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextParam(BaseModel):
    model_config = _STRICT
    format: TextFormatParam | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(BaseModel):
    model_config = _STRICT
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptionsParam(BaseModel):
    model_config = _STRICT
    include_obfuscation: bool | None = None


class ResponsesRequest(BaseModel):
    model_config = _STRICT

    model: str
    # Items and tools are parsed one by one by their `type` (responses_api.py), so a 400 can
    # name the item or the hosted tool it cannot take.
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = False
    stream_options: StreamOptionsParam | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    # Need state or features callgate lacks: refused unless absent / neutral (responses_api.py).
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    background: bool | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    # Bookkeeping that changes nothing about the answer: accepted and ignored.
    store: bool | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # callgate extensions (the openai client's extra_body).
    seed: int | None = Field(None, ge=0, lt=2**63)
    no_tool_threshold: float | None = Field(None, ge=0, le=1)
