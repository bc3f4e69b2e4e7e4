"""The adapter manifest: `adapters/<name>/manifest.json`, written by `python -m training export`
and read by the gateway's adapter registry. One model for both sides, so what was trained is
what is served: the tool format, chat template and tool_choice policy bind to the adapter.

Pure (pydantic only): the training module imports it, the server reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "manifest.json"
# Adapter names travel in `model` and in admin requests; they are never paths.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# vLLM's --max-lora-rank accepts only these values (vllm/config/lora.py MaxLoRARanks, default 16);
# it serves adapters of rank <= the value chosen; export refuses ranks above 512 and reports the smallest fit.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class BaseModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="hub id or local path the adapter was trained on")
    sha256: str = Field(description="of the base weights (safetensors files, sorted by name)")
    gguf_sha256: str | None = Field(None, description="of the base GGUF the llama.cpp adapter fits")


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(ge=1)
    alpha: float
    dropout: float = 0.0
    target_modules: list[str]
    use_rslora: bool = False


class AdapterFilesSpec(BaseModel):
    """File names inside the adapter folder (never absolute, never with '..')."""

    model_config = ConfigDict(extra="forbid")

    peft_config: str = "adapter_config.json"
    peft_weights: str = "adapter_model.safetensors"
    gguf: str | None = "adapter.gguf"
    chat_template: str = "chat_template.jinja"


class AdapterManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    base_model: BaseModelRef
    tool_format: str = Field(description="a name from server.toolcalls.format_names()")
    tool_choice: Literal["auto", "required", "none"] = Field(
        "auto", description="used when a request with tools sends no tool_choice"
    )
    no_tool_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="auto mode's no-tool threshold calibrated on this adapter; unset: the operator's "
        "model.no_tool_threshold if any (a catalogue base's calibration is not the adapter's)",
    )
    tool_prompt_sha256: str | None = Field(
        None,
        description="of the gateway's tool prompt wording the adapter was trained on "
        "(server.toolcalls.prompting.prompt_sha256), for a chat template without a tool section",
    )
    lora: LoraSpec
    data_sha256: str | None = None
    scores: dict[str, float] = Field(default_factory=dict, description="evaluation, name -> value")
    files: AdapterFilesSpec = Field(default_factory=AdapterFilesSpec)
    created: str | None = Field(None, description="ISO 8601 time of export")


def read_manifest(folder: Path) -> AdapterManifest:
    return AdapterManifest.model_validate_json((folder / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(folder: Path, manifest: AdapterManifest) -> Path:
    """Written atomically (temp file + rename), so a reader never sees half a manifest."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    return atomic_write_text(folder / MANIFEST, text)


def atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_files(paths: list[Path]) -> str:
    """One digest over several files, in the order given (callers sort them)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
