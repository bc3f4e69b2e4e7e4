"""The models the gateway serves, by the name clients send: base models and the adapters on
them. Names are looked up here and nowhere else: no request ever names a path."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.adapters.registry import AdapterRegistry
from server.errors import NotFound
from server.serving.served import Served


@dataclass
class ModelRegistry:
    models: dict[str, Served] = field(default_factory=dict)
    adapters: AdapterRegistry | None = None  # on the default model

    def add(self, served: Served) -> None:
        self.models[served.name] = served

    def get(self, name: str) -> Served:
        served = self.models.get(name) or (self.adapters.get(name) if self.adapters else None)
        if served is None:
            known = ", ".join(self.names()) or "none"
            raise NotFound(f"model {name!r} is not served here; served models: {known}", param="model")
        return served

    def names(self) -> list[str]:
        return sorted(self.models) + sorted(self.adapters.served if self.adapters else ())

    def default(self) -> Served:
        return next(iter(self.models.values()))

    async def start(self) -> None:
        for engine in {id(s.engine): s.engine for s in self.models.values()}.values():
            await engine.start()  # background work, e.g. the router's health checks
        if self.adapters is not None:
            await self.adapters.start()

    async def close(self) -> None:
        if self.adapters is not None:
            await self.adapters.pool.close()
        engines = {id(s.engine): s.engine for s in self.models.values()}
        for engine in engines.values():
            await engine.close()
