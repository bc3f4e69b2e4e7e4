"""Adapter folders for the registry tests: a manifest as `python -m training export` writes it,
placeholder weights (the fake engine never reads them) and optionally a chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.adapters.manifest import AdapterManifest, BaseModelRef, LoraSpec, sha256_files, write_manifest
from server.config import Settings, load_settings

# A template whose output is easy to recognise in a prompt.
MARKED_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }} [adapter-template]\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if tools %}TOOLS{{ tools | tojson }}{% endif %}<|im_start|>assistant\n"
)

# One without a tool section (as SmolLM2's): the gateway writes the tools into a system message.
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


def base_file(root: Path) -> Path:
    path = root / "base.gguf"
    path.write_bytes(b"GGUF not really a model")
    return path


def make_adapter(
    adapters: Path, name: str, base: Path | None = None, *, template: str | None = None, **fields: Any
) -> Path:
    folder = adapters / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = AdapterManifest.model_validate(
        {
            "name": name,
            "base_model": BaseModelRef(id="tiny", sha256="0" * 64, gguf_sha256=sha256_files([base]) if base else None),
            "tool_format": "hermes",
            "lora": LoraSpec(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]),
            **fields,
        }
    )
    write_manifest(folder, manifest)
    (folder / "adapter.gguf").write_bytes(b"GGUF lora")
    (folder / "adapter_model.safetensors").write_bytes(b"{}")
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def adapter_settings(base: Path, adapters: Path, **flags: Any) -> Settings:
    return load_settings(None, **{"model.path": base, "model.served_name": "base", "adapters.dir": adapters, **flags})
