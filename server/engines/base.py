"""The engine seam: a token generator that takes a rendered prompt, an optional grammar and
an optional adapter. Engines know nothing of tools, OpenAI shapes or HTTP; the gateway owns
tool-calling semantics and hands engines a Lark grammar (llguidance syntax).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from server.plaintext import prompt_spans, unmarked
from server.types import Cancel, Sampling

# For engines: client text in a prompt is plain text; Cancel is the gateway's, checked between tokens.
__all__ = ["Cancel", "prompt_spans", "unmarked"]
GrammarSyntax = Literal["lark", "gbnf"]


@dataclass(frozen=True)
class Gbnf:
    """The same constraint as GenerateRequest.grammar in llama.cpp's GBNF, for engines whose
    upstream enforces grammars itself (llama-server). With `triggers`, the grammar is lazy:
    text is free until one of these words appears, and from it on must match `text`."""

    text: str
    triggers: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str  # marked: spans from prompt_spans() flagged False are tokenized as plain text
    sampling: Sampling
    grammar: str | None = None  # llguidance Lark; None means unconstrained
    adapter: str | None = None  # the name of an adapter loaded with Engine.load_adapter
    adapter_scale: float = 1.0  # LoRA scale for this request
    # Set by the chat layer, beside `grammar`, when EngineInfo.grammar_syntax is "gbnf".
    gbnf: Gbnf | None = None


@dataclass(frozen=True)
class Piece:
    """Newly generated text (always whole UTF-8 characters) and how many tokens made it."""

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop" (end of turn, stop string or grammar complete) | "length"
    prompt_tokens: int
    completion_tokens: int


Event = Piece | Finish


@dataclass(frozen=True)
class EngineInfo:
    model: str
    context_length: int
    chat_template: str | None  # the template embedded in the model, if any
    bos_token: str
    eos_token: str
    special_tokens: frozenset[str] = field(default_factory=frozenset)
    special_token_ids: tuple[tuple[str, int], ...] = ()  # (text, id) of each special token
    grammar_syntax: GrammarSyntax = "lark"  # what the engine enforces: "lark" (llguidance) or "gbnf" (llama.cpp)


@dataclass(frozen=True)
class AdapterFiles:
    """One LoRA adapter as engines load it. Each engine takes the file it understands: the
    GGUF LoRA (llama.cpp, llama-server) or the PEFT folder (vLLM). Paths come from the adapter
    registry's own folder, never from a request."""

    name: str
    peft_dir: Path
    gguf: Path | None = None


class Engine(Protocol):
    """Everything the gateway asks of an engine. `parallelism` sizes the model's admission
    queue: how many requests the engine really decodes at once (over all its replicas)."""

    parallelism: int

    def info(self) -> EngineInfo: ...

    async def start(self) -> None:
        """Background work that needs the running event loop (the router's health checks);
        called once when the app starts. Most engines have none."""
        ...

    def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]: ...

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        """P(first token of each candidate) as the next token after `prompt`, with the adapter
        applied as generate() applies it (the no-tool decision must see the model that answers)."""
        ...

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        """Make `adapter.name` usable in GenerateRequest.adapter; loading twice is a no-op."""
        ...

    async def unload_adapter(self, name: str) -> None:
        """Free the adapter; requests naming it afterwards fail. Unknown names are a no-op."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class CountsTokens(Protocol):
    """An engine that can count a prompt's tokens without generating (count_tokens routes)."""

    async def count_tokens(self, text: str) -> int: ...
