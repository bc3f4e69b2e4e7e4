"""What a remote engine must know of its model's tokenizer without loading it: the chat
template, BOS / EOS texts and the special (added) tokens with their ids, read as plain JSON
from a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, and
chat_template.jinja where newer transformers write the template). vLLM serves none of this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import ConfigError


@dataclass(frozen=True)
class Vocab:
    chat_template: str | None
    bos_token: str
    eos_token: str
    special_token_ids: tuple[tuple[str, int], ...] = ()


def read_tokenizer_dir(path: Path) -> Vocab:
    """The tokenizer facts of a transformers folder; ConfigError names what is missing."""
    config = _load(path / "tokenizer_config.json", required=True)
    tokenizer = _load(path / "tokenizer.json", required=False)
    specials: dict[str, int] = {}
    for token in tokenizer.get("added_tokens", []):
        specials[str(token["content"])] = int(token["id"])
    for token_id, token in config.get("added_tokens_decoder", {}).items():
        specials.setdefault(str(token["content"]), int(token_id))
    return Vocab(
        chat_template=_template(path, config),
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
        special_token_ids=tuple(sorted(specials.items(), key=lambda pair: pair[1])),
    )


def _template(path: Path, config: dict[str, Any]) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "tool_use" when tools are given
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("tool_use") or named.get("default")
    return template if isinstance(template, str) else None


def _token_text(value: Any) -> str:
    """bos_token / eos_token are a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _load(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConfigError(f"engine.tokenizer: {path} not found; point it at the model's transformers folder")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"engine.tokenizer: cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}
