"""The gateway's one settings object, read once at start-up.

Sources, later wins: defaults, a YAML file (`--config`), environment variables
(`CALLGATE_<SECTION>__<KEY>`, e.g. CALLGATE_LIMITS__MAX_QUEUE=32), command-line flags.
Unsafe or contradictory combinations are refused here, before anything is loaded.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from server.errors import ConfigError


class ServerSection(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(4_000_000, ge=1024, description="larger request bodies get 413")
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="after SIGTERM, how long in-flight requests may take to finish"
    )


class ModelSection(BaseModel):
    path: Path | None = Field(None, description="GGUF file or catalogue name; default: the demo model")
    models_dir: Path = Field(Path("models"), description="where catalogue models are fetched to and found")
    served_name: str | None = Field(None, description="the id clients send; default: file stem")
    chat_template: Path | None = Field(None, description="a Jinja file overriding the model's")
    tool_format: str = Field(
        "auto", description='how the model writes tool calls; "auto": detected from the chat template'
    )
    context_length: int = Field(4096, ge=128)
    threads: int | None = Field(None, ge=1, description="llama.cpp threads; default: half the logical cores")
    slots: int | None = Field(
        None,
        ge=1,
        le=64,
        description="requests llama.cpp decodes together in one batch, each with its own context_length "
        "KV cache; default: from the context (4 at 4096, 8 at 2048 or less)",
    )
    kv_unified: bool = Field(
        False,
        description="one KV buffer for all slots: 1.3x the tokens/s at 8 busy slots, but a seeded "
        "answer then depends on what else ran (attention sums over every cached cell, masked); "
        "false: one KV stream per slot, seeded answers reproduce",
    )
    no_tool_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="in tool_choice auto, call a tool only if P(opening a call) reaches this",
    )
    catalogue_threshold: bool = Field(
        True,
        description="with no no_tool_threshold set, use the catalogue's calibrated one for a catalogue model",
    )


class LimitsSection(BaseModel):
    max_queue: int = Field(64, ge=1, description="requests waiting per model; past it, 429")
    queue_timeout_s: float = Field(60.0, gt=0, description="longest wait in the queue; then 504")
    default_max_tokens: int = Field(512, ge=1)
    max_tokens: int = Field(2048, ge=1, description="largest max_tokens a request may ask")
    max_messages: int = Field(512, ge=1)
    max_tools: int = Field(128, ge=1)
    max_schema_bytes: int = Field(65_536, ge=256, description="per tool, as compact JSON")
    max_schema_depth: int = Field(24, ge=2)
    max_json_depth: int = Field(64, ge=2, description="nesting of the JSON in a history's tool-call arguments")
    max_tools_bytes: int = Field(262_144, ge=1024, description="all of a request's schemas together, as compact JSON")
    compile_timeout_s: float = Field(
        5.0, gt=0, description="longest constraint compilation; past it the request gets 400"
    )


# Keys are secrets: SecretStr keeps them out of reprs, logs and error messages.
Keys = Annotated[list[SecretStr], NoDecode]


class AuthSection(BaseModel):
    api_keys: Keys = Field(default_factory=list, description="Bearer keys for inference routes")
    admin_keys: Keys = Field(default_factory=list, description="Bearer keys for admin routes (and inference)")
    open_metrics: bool | None = Field(
        None, description="serve /metrics without a key (for Prometheus); default: only while no key is set"
    )
    open_health: bool = Field(True, description="serve /health without a key (for probes)")
    api_keys_file: Path | None = Field(None, description="more api_keys, one a line: a mounted secret")
    admin_keys_file: Path | None = Field(None, description="more admin_keys, one a line: a mounted secret")
    allow_open: bool = Field(False, description="serve with no key on a non-loopback address, on purpose")

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """The environment gives one string: a JSON list or comma-separated keys."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @model_validator(mode="after")
    def _read_key_files(self) -> AuthSection:
        for path, keys in ((self.api_keys_file, self.api_keys), (self.admin_keys_file, self.admin_keys)):
            if path is not None:
                try:
                    lines = path.read_text().splitlines()
                except OSError as exc:
                    raise ValueError(f"cannot read the keys file {path}: {exc.strerror}") from None
                keys += [SecretStr(line.strip()) for line in lines if line.strip()]
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)


class GenerationSection(BaseModel):
    validation_retries: int = Field(1, ge=0, le=5, description="regenerations when a call still fails validation")


class AdaptersSection(BaseModel):
    dir: Path = Field(
        Path("adapters"),
        description="folder of adapter folders (<name>/manifest.json); the admin API loads only from here",
    )
    max_loaded: int = Field(4, ge=1, description="adapters held by one engine at once; least recently used evicted")
    pinned: list[str] = Field(default_factory=list, description="adapter names never evicted, loaded at start")
    scale: float = Field(1.0, ge=0.0, le=4.0, description="LoRA scale of requests to an adapter")

    @model_validator(mode="after")
    def _room_for_pinned(self) -> AdaptersSection:
        if len(set(self.pinned)) > self.max_loaded:
            raise ValueError(
                f"adapters.pinned names {len(set(self.pinned))} adapters but adapters.max_loaded "
                f"is {self.max_loaded}; pinned adapters must all fit"
            )
        return self


EngineKind = Literal["llamacpp", "vllm", "llama-server"]


class EngineSection(BaseModel):
    """Where tokens come from: llama.cpp in this process (the default), or upstream servers
    (vLLM, llama-server) behind the replica router (server/engines/router.py, docs/deploy.md)."""

    kind: EngineKind = Field("llamacpp", description='"llamacpp" (embedded), "vllm" or "llama-server"')
    urls: list[str] = Field(default_factory=list, description="upstream replicas of one model, e.g. http://vllm-0:8000")
    upstream_model: str | None = Field(None, description="the model name the upstream serves; default: ask it")
    tokenizer: Path | None = Field(
        None,
        description="vllm: the model's transformers folder (chat template, special tokens), which vLLM "
        "does not serve; without it --chat-template is required and call markers are spelled as text",
    )
    path_map: dict[str, str] = Field(
        default_factory=dict,
        description="local path prefix -> the same folder as the upstream host sees it "
        "(adapter folders pushed to vLLM, GGUF LoRAs matched on llama-server)",
    )
    api_key: SecretStr | None = Field(None, description="Bearer key of the upstreams (vllm --api-key)")
    slots_per_replica: int = Field(
        8, ge=1, description="requests in flight per replica; admission slots = this x replicas"
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="connecting to a replica; past it, another is tried")
    read_timeout_s: float = Field(60.0, gt=0, description="longest silence from a replica mid-answer")
    startup_timeout_s: float = Field(300.0, ge=0, description="how long start-up waits for a replica to answer")
    health_interval_s: float = Field(2.0, gt=0, description="between health checks of each replica")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that take a replica out")
    breaker_open_s: float = Field(10.0, gt=0, description="how long it stays out before one request probes it")
    retries: int = Field(2, ge=0, description="other replicas tried when one fails before the first token")
    verify_grammar: bool = Field(
        True, description="at start-up, refuse an upstream that does not enforce grammars (it would fail open)"
    )

    @model_validator(mode="after")
    def _upstreams(self) -> EngineSection:
        if self.kind == "llamacpp" and self.urls:
            raise ValueError(
                'engine.urls are for engine.kind "vllm" or "llama-server"; the embedded engine reads model.path'
            )
        if self.kind != "llamacpp" and not self.urls:
            raise ValueError(f"engine.kind {self.kind!r} needs engine.urls (one or more replicas)")
        if any(not url.startswith(("http://", "https://")) for url in self.urls):
            raise ValueError("engine.urls must be http:// or https:// URLs")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLGATE_", env_nested_delimiter="__", extra="forbid")

    server: ServerSection = ServerSection()
    model: ModelSection = ModelSection()
    limits: LimitsSection = LimitsSection()
    auth: AuthSection = AuthSection()
    generation: GenerationSection = GenerationSection()
    adapters: AdaptersSection = AdaptersSection()
    engine: EngineSection = EngineSection()

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.limits.default_max_tokens > self.limits.max_tokens:
            raise ValueError("limits.default_max_tokens cannot exceed limits.max_tokens")
        if self.limits.max_tokens >= self.model.context_length:
            raise ValueError("limits.max_tokens must be below model.context_length")
        if any(not key.get_secret_value() for key in self.auth.api_keys + self.auth.admin_keys):
            raise ValueError("auth keys cannot be empty strings; remove the empty entry")
        if not (self.auth.enabled or self.auth.allow_open or is_loopback(self.server.host)):
            raise ValueError(
                f"server.host {self.server.host} is reachable from the network and no API key is set: anyone "
                "there could use and administer this gateway. Set auth.api_keys / auth.admin_keys (or "
                "auth.api_keys_file / auth.admin_keys_file, e.g. a mounted secret), bind 127.0.0.1, or set "
                "auth.allow_open: true (CALLGATE_AUTH__ALLOW_OPEN=true) to serve it open on purpose"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat the environment, which beats the YAML file passed as init too.
        return (init_settings, env_settings)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Defaults < YAML file < environment < flags. Flags are dotted: {"model.path": ...}."""
    base = _read_yaml(config_file) if config_file else {}
    try:
        merged = _deep_merge(base, _env_overrides())
        merged = _deep_merge(merged, _nest({k: v for k, v in flags.items() if v is not None}))
        return Settings.model_validate(merged)
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None


def _env_overrides() -> dict[str, Any]:
    return Settings().model_dump(exclude_defaults=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
