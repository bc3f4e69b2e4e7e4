"""The models the gateway serves, by the name clients send. Names are looked up here and
nowhere else: no request ever names a path."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.chat import Served
from server.errors import NotFound


@dataclass
class ModelRegistry:
    models: dict[str, Served] = field(default_factory=dict)

    def add(self, served: Served) -> None:
        self.models[served.name] = served

    def get(self, name: str) -> Served:
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"model {name!r} is not served here; served models: {known}", param="model")
        return served

    def default(self) -> Served:
        return next(iter(self.models.values()))

    async def close(self) -> None:
        engines = {id(s.engine): s.engine for s in self.models.values()}
        for engine in engines.values():
            await engine.close()
