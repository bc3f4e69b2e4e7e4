"""A marked prompt as token ids, with the model's own tokenizer.json (Hugging Face `tokenizers`),
for upstreams that tokenize text themselves with special-token parsing always on (vLLM: its
/tokenize cannot turn parsing off). The template's spans are tokenized as vLLM would; client
text that spells a special token is tokenized with no added token matched at all, so it reaches
the model as ordinary tokens. Knows nothing of HTTP; `tokenizers` is imported only here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.engines.base import prompt_spans
from server.errors import ConfigError


class PromptTokenizer:
    def __init__(self, tokenizer_json: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "the vllm engine needs the `tokenizers` package to keep client text plain: pip install 'callgate[vllm]'"
            ) from None
        try:
            text = tokenizer_json.read_text(encoding="utf-8")
            spec: dict[str, Any] = json.loads(text)
            self._full = Tokenizer.from_str(text)
            # The same tokenizer with no added tokens: "<|im_end|>" is then "<", "|", "im", ...
            self._plain = Tokenizer.from_str(json.dumps({**spec, "added_tokens": []}))
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError, or tokenizers' bare Exception
            raise ConfigError(
                f"engine.tokenizer: cannot load {tokenizer_json}: {exc} (the vllm engine needs "
                "the model's tokenizer.json to send client text as plain tokens)"
            ) from None

    def ids(self, prompt: str) -> list[int]:
        """Token ids of a marked prompt (server/plaintext.py); never adds BOS (the template wrote it)."""
        out: list[int] = []
        for text, special in prompt_spans(prompt):
            tokenizer = self._full if special else self._plain
            out += tokenizer.encode(text, add_special_tokens=False).ids
        return out
