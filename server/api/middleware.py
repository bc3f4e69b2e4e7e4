"""ASGI middleware: request-body size limit (413 before the app reads it) and text check (400
for lone UTF-16 surrogates, which no tokenizer or encoder downstream can take), request latency
metrics measured to the last byte (streaming included), and the drain after SIGTERM (503 for
new requests while in-flight ones finish). Knows nothing of routes beyond their paths.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import error_body, log_refusal
from server.errors import GatewayError, InvalidRequest, PayloadTooLarge
from server.metrics import Metrics
from server.types import Cancel

log = logging.getLogger("callgate")
# Served while draining: Prometheus keeps scraping the last numbers of a stopping replica.
_DRAIN_EXEMPT = frozenset({"/metrics"})
# Not counted as in-flight work: probes and scrapes must not hold a shutdown open.
_NOT_WORK = frozenset({"/metrics", "/health"})


class ShuttingDown(GatewayError):
    status = 503
    type = "server_error"
    code = "shutting_down"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(scope, send)
                return
        if _SURROGATE_ESCAPE.search(body):  # rare: only then is the body parsed here (off the loop)
            where = await asyncio.to_thread(lone_surrogate_at, body)
            if where is not None:
                await send_error(
                    scope,
                    send,
                    InvalidRequest(
                        f"{where} contains a lone UTF-16 surrogate (a \\ud800-\\udfff escape that is not "
                        "half of a pair); send valid Unicode text",
                        param=where,
                        code="invalid_unicode",
                    ),
                )
                return
        await self.app(scope, _replay(body, receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await send_error(scope, send, PayloadTooLarge(f"request body is over the {self.max_bytes}-byte limit"))


async def send_error(
    scope: Scope, send: Send, err: GatewayError, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """An error response written below the app (its exception handlers cannot see it)."""
    log_refusal(scope["method"], scope["path"], err)
    payload = json.dumps(error_body(err, scope["path"])).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# JSON can carry a surrogate only as an escape; one that is half of a pair decodes to one character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_at(body: bytes) -> str | None:
    """The path (`messages[0].content`) of the first string holding a lone surrogate, or None
    (also for a body that is not JSON: the app answers that one)."""
    try:
        stack: list[tuple[str, object]] = [("", json.loads(body))]
    except (ValueError, RecursionError):
        return None
    while stack:
        path, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(key, str) and _SURROGATE.search(key):
                return f"{path or 'body'} (a key)"
            sub = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
            if isinstance(value, str) and _SURROGATE.search(value):
                return sub
            stack.append((sub, value))
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestMetrics:
    """Observes latency by model, adapter, endpoint and status once the response is done.
    Routes put the model and adapter into scope["state"]."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            state: dict[str, Any] = scope.get("state", {})
            self.metrics.request_seconds.labels(
                state.get("model", ""), state.get("adapter", "none"), _endpoint(scope), str(status)
            ).observe(time.perf_counter() - start)


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class Lifecycle:
    """In-flight work and the drain: after `drain()`, new requests get 503; in-flight ones
    finish, or are cut (with an error event) once `deadline_s` has passed."""

    def __init__(self, deadline_s: float, metrics: Metrics):
        self.deadline_s = deadline_s
        self.metrics = metrics
        self.draining = False
        self.aborted = False  # the deadline passed: answers still running end with 503
        self.inflight = 0
        self._cancels: set[Cancel] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    def track(self, cancel: Cancel) -> Callable[[], None]:
        """Register a generation to stop at the deadline; returns its un-registration."""
        self._cancels.add(cancel)
        return lambda: self._cancels.discard(cancel)

    async def drain(self, then: Callable[[], None]) -> None:
        """Refuse new work, wait for in-flight work (up to the deadline), then call `then`."""
        self.draining = True
        self.metrics.draining.set(1)
        log.info("draining: %d requests in flight, up to %gs to finish", self.inflight, self.deadline_s)
        try:
            await asyncio.wait_for(self._idle.wait(), self.deadline_s)
        except TimeoutError:
            log.warning("drain deadline passed; stopping %d requests", self.inflight)
            self.abort()
            await asyncio.sleep(0)  # let the stopped streams write their last event
        then()

    def abort(self) -> None:
        """Stop every tracked request: generations at their next token, queued ones before
        their prefill (run_chat checks the flag once it has a slot)."""
        self.draining = self.aborted = True
        for cancel in list(self._cancels):
            cancel.set()


class Drain:
    """503 (with Connection: close) for new requests once draining; counts in-flight work."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle):
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _DRAIN_EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            err = ShuttingDown("the gateway is shutting down; retry (another replica will answer)")
            await send_error(scope, send, err, ((b"connection", b"close"), (b"retry-after", b"1")))
            return
        if scope["path"] in _NOT_WORK:
            await self.app(scope, receive, send)
            return
        self.lifecycle.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.leave()
