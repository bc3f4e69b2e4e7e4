"""The app factory: `create_app(settings, models)` wires routes, middleware, error rendering,
API-key scopes and the SIGTERM drain around a model registry. Nothing is created at import time.
The app imports the routers; the routers take what they need from api/deps.py, never from here.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI

from server import __version__
from server.api import admin_routes, chat_routes, errors, info_routes, messages_api, responses_api
from server.api.deps import Gateway
from server.api.middleware import BodyLimit, Drain, Lifecycle, RequestMetrics
from server.auth import KeyRing, warn_if_exposed
from server.config import Settings
from server.metrics import Metrics
from server.serving.registry import ModelRegistry


def create_app(settings: Settings, models: ModelRegistry, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics()
    lifecycle = Lifecycle(settings.server.shutdown_timeout_s, metrics)
    gateway = Gateway(settings, models, metrics, KeyRing(settings.auth), lifecycle)
    warn_if_exposed(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        restore = _drain_on_signals(lifecycle)
        try:
            await models.start()  # pinned adapters load now
            yield
        finally:
            restore()
            await models.close()

    # With keys set, the API description is for key holders too (info_routes.keyed_docs).
    open_docs = not settings.auth.enabled
    app = FastAPI(
        title="callgate",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if open_docs else None,
        redoc_url="/redoc" if open_docs else None,
        openapi_url="/openapi.json" if open_docs else None,
    )
    app.state.gateway = gateway
    errors.install(app)
    if not open_docs:
        info_routes.keyed_docs(app)
    app.include_router(chat_routes.router)
    app.include_router(responses_api.router)
    app.include_router(messages_api.router)
    app.include_router(info_routes.router)
    app.include_router(admin_routes.router)
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(Drain, lifecycle=lifecycle)
    app.add_middleware(RequestMetrics, metrics=gateway.metrics)
    return app


def _drain_on_signals(lifecycle: Lifecycle) -> Callable[[], None]:
    """Put a drain in front of the server's own SIGTERM / SIGINT handling (uvicorn's: stop
    listening, wait for connections), so requests in flight finish and new ones get 503.
    A second signal stops at once: generations are cancelled and uvicorn is told to force its
    exit (it would otherwise wait for every connection). Main thread only (signals)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    tasks: set[asyncio.Task[Any]] = set()  # a reference, so the drain task is not collected
    started = False

    def on_signal(sig: int, frame: FrameType | None) -> None:
        nonlocal started
        handler = previous[sig]
        if not callable(handler):
            return
        if started:  # a second signal: stop generating and exit now, whatever is in flight
            loop.call_soon_threadsafe(lifecycle.abort)
            handler(sig, frame)
            server = getattr(handler, "__self__", None)  # uvicorn's Server: no wait for connections
            if server is not None and hasattr(server, "force_exit"):
                server.should_exit = server.force_exit = True
            return
        started = True
        loop.call_soon_threadsafe(lambda: tasks.add(loop.create_task(lifecycle.drain(lambda: handler(sig, frame)))))

    for sig in previous:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
