"""A pydantic mirror of the vLLM request shapes callgate sends, written from vLLM's own source
(vLLM cannot run here), so tests can check our bodies field by field:

- CompletionRequest: vllm-project/vllm vllm/entrypoints/openai/completion/protocol.py at
  002032ee2b18e1f7bd924ec47b62504ba3866063 (fields and their validators, the `stream_options`
  and `logprobs` checks), with SamplingParams' ranges from vllm/sampling_params.py
  (temperature >= 0, 0 < top_p <= 1, max_tokens >= 1).
- StructuredOutputsParams: vllm/sampling_params.py (exactly one of json, regex, choice, grammar,
  json_object, structural_tag; the `guidance` backend compiles `grammar` with
  llguidance.grammar_from("grammar", ...): vllm/v1/structured_output/backend_guidance.py).
- LoadLoRAAdapterRequest / UnloadLoRAAdapterRequest: vllm/entrypoints/serve/lora/protocol.py,
  and their answers in vllm/entrypoints/openai/models/serving.py at 00153c8b7948077ebdfc5bfa14e403da41aaea6d
  (400 "has already been loaded" unless load_inplace; 404 when unloading an unknown name).

Only fields callgate uses are mirrored, with extra="forbid": a misspelt field fails here
instead of being silently ignored by vLLM (whose models allow extra fields).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_INT64 = 2**63


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class StructuredOutputsParams(_Strict):
    json_: str | dict[str, Any] | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputsParams:
        kinds = (self.json_, self.regex, self.choice, self.grammar, self.json_object, self.structural_tag)
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("You must use exactly one kind of structured outputs constraint")
        if self.grammar is not None and not self.grammar.strip():
            raise ValueError("grammar cannot be an empty string")
        return self


class CompletionRequest(_Strict):
    model: str | None = None
    prompt: str | list[str] | list[Annotated[int, Field(ge=0)]] | None = None
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-_INT64, le=_INT64 - 1)
    stop: str | list[str] | None = []
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=20)  # vLLM's --max-logprobs default
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputsParams | None = None

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("Stream options can only be defined when `stream=True`.")
        if not self.prompt:
            raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")
        return self


class LoadLoRAAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
