"""What the HTTP engines (vLLM, llama-server) share: an httpx client with connect and read
timeouts, server-sent-event reading, and upstream failures turned into the gateway's errors,
each saying whether it was the replica's fault (so the router may try another replica when
nothing was generated yet). Knows nothing of either server's request shapes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.errors import EngineError, InvalidRequest

# Failure kinds, also the `kind` label of callgate_upstream_errors_total.
CONNECT = "connect"  # refused, unreachable, connect timeout
TIMEOUT = "timeout"  # no byte for read_timeout_s
DISCONNECT = "disconnect"  # the connection broke mid-answer
OVERLOADED = "overloaded"  # 429 / 503: busy or still loading
STATUS = "status"  # any other 5xx
REJECTED = "rejected"  # a 4xx: the request, not the replica
NOT_FOUND = "not_found"  # 404: the model or adapter is not (or no longer) on that replica
PROTOCOL = "protocol"  # an answer that does not parse
REPLICA_FAULTS = frozenset({CONNECT, TIMEOUT, DISCONNECT, OVERLOADED, STATUS, PROTOCOL})

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CONTEXT_WORDS = re.compile(r"context|maximum.{0,40}length", re.I)


class UpstreamError(EngineError):
    """An upstream server failed; `kind` is one of the constants above."""

    def __init__(self, message: str, *, replica: str, kind: str):
        super().__init__(f"an upstream replica failed: {message}")  # its URL goes to logs, not clients
        self.replica = replica
        self.kind = kind

    @property
    def replica_fault(self) -> bool:
        """The replica's failure, not the request's: another replica may succeed."""
        return self.kind in REPLICA_FAULTS


class Unavailable(EngineError):
    """No replica can take the request now (all down, or the breakers open)."""

    status = 503
    code = "upstream_unavailable"


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 2.0
    read_s: float = 60.0  # longest silence while waiting for the next bytes of an answer


def make_client(base_url: str, timeouts: Timeouts, api_key: str | None, connections: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s, pool=None)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits)


async def sse_events(
    client: httpx.AsyncClient, path: str, body: Mapping[str, Any], replica: str
) -> AsyncGenerator[dict[str, Any], None]:
    """POST `body` and yield each `data:` event as JSON until `[DONE]` or the stream ends;
    comments (llama-server's and sse-starlette's pings) are skipped, error events raised."""
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                raise status_error(response.status_code, (await response.aread()).decode(errors="replace"), replica)
            async for line in _lines(response):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = _json(data, replica)
                if "error" in event:
                    raise event_error(event["error"], replica)
                yield event
    except httpx.HTTPError as exc:
        raise transport_error(exc, replica) from None


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    """SSE lines end at CR, LF or CRLF only. httpx's aiter_lines also splits at U+2028, U+0085
    and the like (str.splitlines), which JSON leaves unescaped inside strings: a model that
    writes one would cut an event in half."""
    buffer = ""
    async for text in response.aiter_text():
        *lines, buffer = _LINE_BREAK.split(buffer + text)
        for line in lines:
            yield line
    if buffer:
        yield buffer


async def post_json(client: httpx.AsyncClient, path: str, body: Mapping[str, Any], replica: str) -> Any:
    try:
        response = await client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise transport_error(exc, replica) from None
    if response.status_code != 200:
        raise status_error(response.status_code, response.text, replica)
    return _json(response.text, replica) if response.text.strip().startswith(("{", "[")) else response.text


def transport_error(exc: httpx.HTTPError, replica: str) -> UpstreamError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamError(f"cannot connect ({exc!r})", replica=replica, kind=CONNECT)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"no answer within the read timeout ({type(exc).__name__})", replica=replica, kind=TIMEOUT)
    return UpstreamError(f"the connection broke ({exc!r})", replica=replica, kind=DISCONNECT)


def status_error(status: int, text: str, replica: str) -> GatewayErrorLike:
    message = error_message(text)
    if status == 400 and _CONTEXT_WORDS.search(message):
        return InvalidRequest(
            f"the prompt plus max_tokens does not fit the model's context ({message}); shorten the "
            "conversation or lower max_tokens",
            param="messages",
            code="context_length_exceeded",
        )
    if status in (429, 503):
        kind = OVERLOADED
    elif status == 404:
        kind = NOT_FOUND
    elif status >= 500:
        kind = STATUS
    else:
        kind = REJECTED
    return UpstreamError(f"HTTP {status}: {message}", replica=replica, kind=kind)


def event_error(error: Any, replica: str) -> GatewayErrorLike:
    """An error sent as an SSE event after the stream began (vLLM, llama-server)."""
    if not isinstance(error, dict):
        return UpstreamError(f"error event: {error}", replica=replica, kind=STATUS)
    code = error.get("code")
    status = code if isinstance(code, int) else 500
    return status_error(status, json.dumps({"error": error}), replica)


def error_message(text: str) -> str:
    """The message of an OpenAI-style or llama-server error body, else the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:500]
    return str(error)[:500]


def _json(text: str, replica: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise UpstreamError(f"an answer that is not JSON: {text[:200]!r}", replica=replica, kind=PROTOCOL) from None


GatewayErrorLike = UpstreamError | InvalidRequest


@dataclass(frozen=True)
class Upstream:
    """One upstream server as the gateway reaches it."""

    url: str
    model: str | None = None  # the name the upstream serves its base model under; None: ask it
    timeouts: Timeouts = Timeouts()
    api_key: str | None = None
    slots: int = 8  # requests this gateway sends it at once
    startup_timeout_s: float = 300.0  # how long start-up waits for it to answer


@dataclass(frozen=True)
class Health:
    ok: bool
    load: float | None = None  # requests running + waiting there, as the upstream reports them
    detail: str = ""


def first_ready(upstreams: Sequence[Upstream], path: str) -> tuple[Upstream, Any]:
    """GET `path` from each upstream in turn (blocking, at start-up) until one answers 200,
    retrying while they are unreachable or loading (503) until the first one's
    `startup_timeout_s`. Returns that upstream and its JSON; raises ConfigError naming them."""
    from server.errors import ConfigError

    deadline = time.monotonic() + upstreams[0].startup_timeout_s
    last: dict[str, str] = {}
    while True:
        for upstream in upstreams:
            try:
                response = _sync_get(upstream, path)
                if response.status_code == 200:
                    return upstream, response.json()
                last[upstream.url] = f"HTTP {response.status_code}: {error_message(response.text)}"
            except (httpx.HTTPError, ValueError) as exc:
                last[upstream.url] = repr(exc)
        if time.monotonic() > deadline:
            seen = "; ".join(f"{url}: {why}" for url, why in last.items())
            raise ConfigError(
                f"no upstream answered {path} within {upstreams[0].startup_timeout_s:g}s "
                f"(engine.startup_timeout_s): {seen}"
            )
        time.sleep(0.25)


def sync_json(upstream: Upstream, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    """One blocking request at start-up; errors as UpstreamError."""
    with _sync_client(upstream) as client:
        try:
            response = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise transport_error(exc, upstream.url) from None
    if response.status_code != 200:
        raise status_error(response.status_code, response.text, upstream.url)
    return _json(response.text, upstream.url)


def _sync_get(upstream: Upstream, path: str) -> httpx.Response:
    with _sync_client(upstream) as client:
        return client.get(path)


def _sync_client(upstream: Upstream) -> httpx.Client:
    headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
    timeout = httpx.Timeout(upstream.timeouts.read_s, connect=upstream.timeouts.connect_s)
    return httpx.Client(base_url=upstream.url, headers=headers, timeout=timeout)


def upstream_load(metrics_text: str, names: tuple[str, ...]) -> float | None:
    """The sum of the named gauges (all label sets) in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total, seen = 0.0, False
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                if sample.name in names:
                    total, seen = total + sample.value, True
    except ValueError:
        return None
    return total if seen else None


def upstream_path(local: Path, path_map: Mapping[str, str]) -> str:
    """A local path as the upstream host sees it (engine.path_map: local prefix -> remote)."""
    text = str(local)
    for prefix, remote in sorted(path_map.items(), key=lambda kv: -len(kv[0])):
        base = prefix.rstrip("/")
        if text == base or text.startswith(base + "/"):
            return remote.rstrip("/") + text[len(base) :]
    return text
