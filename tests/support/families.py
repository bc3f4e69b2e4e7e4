"""The chat templates written for the tests (tests/templates/), one per model family, and the
tool-call format each one must be detected as."""

from __future__ import annotations

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"

# template file stem -> the format detect_format must pick
FAMILIES: dict[str, str] = {
    "hermes": "hermes",  # Hermes 2 Pro / Qwen2.5
    "qwen3_coder": "qwen3_coder",
    "llama3_json": "llama3_json",  # Llama 3.1 JSON
    "llama3_pythonic": "pythonic",  # Llama 3.2 pythonic
    "mistral": "mistral",  # v3 tokenizer: [TOOL_CALLS] [{...}]
    "mistral_v11": "mistral_v11",  # [TOOL_CALLS]name[ARGS]{...}
    "functionary_v3": "functionary_v3",  # v3.2: >>>name
    "granite": "granite",
    "phi4_mini": "phi4_mini",
    "react": "react",
    "base": "json_envelope",  # no tool syntax at all: a base model
}


def template_text(family: str) -> str:
    return (TEMPLATES_DIR / f"{family}.jinja").read_text(encoding="utf-8")
