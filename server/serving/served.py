"""A model, or an adapter on one, as the gateway serves it, in parts that say what each is: what
runs it (engine, what the engine reported, the admission queue), how to talk to it (chat
template and tool-call format), where those came from, the gateway's policy for its requests
and, for an adapter, its binding on the base model's engine. build.py makes the base model's;
adapters/registry.py derives each adapter's from it. Knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field

from server.admission import Admission
from server.engines.base import Engine, EngineInfo
from server.toolcalls import ToolFormat
from server.toolcalls.detect import FormatSource
from server.types import ChoiceMode


@dataclass(frozen=True)
class Provenance:
    """Where the tool format and the chat template came from (shown in /v1/models and logs)."""

    format: FormatSource = "configured"  # or "detected" from the chat template
    template: str = "model"  # "model" (embedded), or the override or adapter file's path


@dataclass(frozen=True)
class Policy:
    """What the gateway decides for requests to this model, beyond what they ask."""

    no_tool_threshold: float | None = None  # auto mode: a call only if P(opening one) reaches it
    validation_retries: int = 1  # regenerations of a first call that fails validation
    default_choice: ChoiceMode = ChoiceMode.AUTO  # when tools come without tool_choice (a manifest's)
    # What an adapter without its own threshold gets: the operator's setting, never the
    # catalogue's calibration, which is of the base model's probabilities, not an adapter's.
    adapter_threshold: float | None = None


@dataclass(frozen=True)
class AdapterBinding:
    """An adapter on the base model's engine. The lease is held from before queueing to the end
    of the answer: it loads the adapter if needed and keeps it from being evicted meanwhile
    (server/adapters/pool.py)."""

    name: str
    scale: float = 1.0  # the LoRA scale of its requests
    lease: Callable[[], AbstractAsyncContextManager[object]] = nullcontext


@dataclass(frozen=True)
class Served:
    name: str
    engine: Engine
    info: EngineInfo
    format: ToolFormat
    template: str
    admission: Admission
    policy: Policy = field(default_factory=Policy)
    provenance: Provenance = field(default_factory=Provenance)
    adapter: AdapterBinding | None = None  # None: the base model itself

    @property
    def adapter_name(self) -> str | None:
        return self.adapter.name if self.adapter is not None else None

    @property
    def adapter_scale(self) -> float:
        return self.adapter.scale if self.adapter is not None else 1.0

    def lease(self) -> AbstractAsyncContextManager[object]:
        return self.adapter.lease() if self.adapter is not None else nullcontext()
