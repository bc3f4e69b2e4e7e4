"""A client that stops reading its stream must not hold the engine: generation runs ahead into
a buffer bounded by max_tokens, the slot is given back when generation ends, and the next
request is served while the slow client still sits on its connection."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.api.app import create_app
from server.config import load_settings
from server.metrics import Metrics
from server.serving.build import build_registry
from tests.support.live import LONG, Live, serve

SMALL = 4096  # bytes of socket buffer each side: a few chunks, far less than the stream


@pytest.fixture(scope="module")
def small_buffers(tiny_model: Any) -> Iterator[Live]:
    settings = load_settings(
        None, **{"model.path": tiny_model.gguf, "model.served_name": "tiny", "limits.queue_timeout_s": 30}
    )
    metrics = Metrics()
    app = create_app(settings, build_registry(settings, metrics), metrics)
    url, server, thread = serve(app, sndbuf=SMALL)
    try:
        yield Live(url, app, settings, metrics)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _stalled_stream(base_url: str) -> socket.socket:
    """Sends a long streaming request, reads its first bytes, then stops reading."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    sock.connect((host, int(port)))
    body = json.dumps({**LONG, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert b"200 OK" in sock.recv(256)
    return sock


def test_a_stalled_reader_does_not_hold_the_engine(small_buffers: Live) -> None:
    admission = small_buffers.app.state.gateway.models.default().admission
    stalled = _stalled_stream(small_buffers.base_url)
    try:
        deadline = time.monotonic() + 20
        while admission.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admission.running == 0, "the stalled client still holds the engine slot"
        r = httpx.post(
            small_buffers.v1 + "/chat/completions",
            timeout=20,
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        )
        assert r.status_code == 200  # served while the stalled client is still connected
    finally:
        stalled.close()
