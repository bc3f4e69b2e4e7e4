"""The app factory: `create_app(settings, models)` wires routes, middleware and error
rendering around a model registry. Nothing is created at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from server import __version__
from server.config import Settings
from server.metrics import Metrics
from server.registry import ModelRegistry


@dataclass
class Gateway:
    settings: Settings
    models: ModelRegistry
    metrics: Metrics


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def create_app(settings: Settings, models: ModelRegistry, metrics: Metrics | None = None) -> FastAPI:
    from server.api import chat_routes, errors, info_routes
    from server.api.middleware import BodyLimit, RequestMetrics

    gateway = Gateway(settings, models, metrics or Metrics())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await models.close()

    app = FastAPI(title="callgate", version=__version__, lifespan=lifespan)
    app.state.gateway = gateway
    errors.install(app)
    app.include_router(chat_routes.router)
    app.include_router(info_routes.router)
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=gateway.metrics)
    return app
