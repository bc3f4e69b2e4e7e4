"""A real gateway for tests: uvicorn on a loopback port in a background thread, serving a
real llama.cpp engine; catalogue models fetched once; and helpers shared by the API tests."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from server import selftest
from server.api.app import create_app
from server.config import Settings, load_settings
from server.engines.base import Engine
from server.errors import ConfigError
from server.metrics import Metrics
from server.serving import fetch
from server.serving.build import build_registry
from server.serving.catalogue import MODELS_DIR, find


@dataclass
class Live:
    base_url: str
    app: FastAPI
    settings: Settings
    metrics: Metrics

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"


def serve(app: FastAPI, sndbuf: int | None = None) -> tuple[str, uvicorn.Server, threading.Thread]:
    """uvicorn on a loopback port in a thread. `sndbuf` shrinks the send buffer of accepted
    connections (they inherit it from the listening socket), for slow-client tests."""
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only for sockets that say so (else +40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server, thread


def live_gateway(model: Path, engine: Engine | None = None, **flags: Any) -> Iterator[Live]:
    """A gateway over `model` (or over `engine`, e.g. one that injects faults) on loopback."""
    settings = load_settings(None, **{"model.path": model, **flags})
    metrics = Metrics()
    app = create_app(settings, build_registry(settings, metrics, engine), metrics)
    yield from running(app, settings, metrics)


def running(app: FastAPI, settings: Settings, metrics: Metrics) -> Iterator[Live]:
    url, server, thread = serve(app)
    try:
        yield Live(url, app, settings, metrics)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# The selftest's probe tools, so the tests and `python -m server selftest` exercise the same.
WEATHER, TRACK = selftest.WEATHER, selftest.ORDER
PING = {"type": "function", "function": {"name": "ping", "description": "No arguments."}}
TOOLS = [WEATHER, TRACK, PING]


# Catalogue models for tests: fetched once into a cache that outlives clones.
MODEL_CACHE = Path(os.environ.get("CALLGATE_MODEL_CACHE", Path.home() / ".cache" / "callgate" / "models"))


def fetched_model(name: str) -> Path:
    model = find(name)
    assert model is not None, name
    try:
        path = fetch.fetch(model, MODEL_CACHE, progress=False)
    except ConfigError as exc:
        pytest.skip(f"{name} cannot be fetched here: {exc}")
    link = model.path(MODELS_DIR)
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(path.resolve())
    return path


# A text answer that cannot end early: a JSON object whose one string is longer than max_tokens.
LONG = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 2000,
    "seed": 1,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "long",
            "schema": {"type": "object", "properties": {"s": {"type": "string", "minLength": 8000}}, "required": ["s"]},
        },
    },
}


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail("gateway did not become healthy")
