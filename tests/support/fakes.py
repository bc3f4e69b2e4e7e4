"""A typed fake engine for unit tests of orchestration only: it replays scripted outputs
(ignoring the grammar, as a misbehaving backend could) and records what it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from server.engines.base import AdapterFiles, Cancel, EngineInfo, Event, Finish, GenerateRequest, Piece

INFO = EngineInfo(
    model="fake",
    context_length=4096,
    chat_template=(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if tools %}TOOLS{{ tools | tojson }}{% endif %}<|im_start|>assistant\n"
    ),
    bos_token="",
    eos_token="<|im_end|>",
    special_tokens=frozenset({"<tool_call>", "</tool_call>", "<|im_end|>"}),
)


@dataclass
class FakeEngine:
    scripts: list[tuple[list[str], str]] = field(default_factory=list)  # (pieces, finish reason)
    p_open: float = 0.5  # of the format's own opener (the first candidate)
    p_loose: float = 0.0  # of each loose opener after it
    requests: list[GenerateRequest] = field(default_factory=list)
    probed: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # token_probabilities' questions
    cancelled: int = 0
    # Adapters: what was loaded and unloaded, in order; a load waits on `load_gate` when set
    # and raises for names in `broken`, as an engine does on a bad file.
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    most_loaded: int = 0
    load_gate: asyncio.Event | None = None
    broken: set[str] = field(default_factory=set)
    parallelism: int = 1

    def info(self) -> EngineInfo:
        return INFO

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        if request.adapter is not None and request.adapter not in self.loaded:
            raise RuntimeError(f"adapter {request.adapter} is not loaded")  # what a real engine does
        self.requests.append(request)
        pieces, reason = self.scripts.pop(0)
        for piece in pieces:
            if cancel.is_set():
                self.cancelled += 1
                return
            yield Piece(piece)
        yield Finish(reason, prompt_tokens=10, completion_tokens=len(pieces))

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        self.probed.append((prompt, tuple(candidates)))
        return [self.p_open if i == 0 else self.p_loose for i, _ in enumerate(candidates)]

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        self.loads.append(adapter.name)
        if self.load_gate is not None:
            await self.load_gate.wait()
        if adapter.name in self.broken:
            raise ValueError(f"{adapter.gguf}: not a GGUF LoRA")
        self.loaded.add(adapter.name)
        self.most_loaded = max(self.most_loaded, len(self.loaded))

    async def unload_adapter(self, name: str) -> None:
        self.unloads.append(name)
        self.loaded.discard(name)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
