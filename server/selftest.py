"""`python -m server selftest`: every tool_choice mode, streamed and not, against each model a
gateway serves, through its public HTTP API only, with a small probe tool set. The contract
checked is the README's: calls are declared tools with schema-valid arguments, each mode keeps
its promise, and the stream says what the JSON answer says. Knows nothing of engines or formats.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import jsonschema

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ORDER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "track_order",
        "description": "Where an order is.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "integer", "minimum": 1}},
            "required": ["order_id"],
        },
    },
}
PROBE_TOOLS = (WEATHER, ORDER)
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in PROBE_TOOLS}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris, and where is order 42?"}]
NAMED = "get_weather"
# mode -> request fields: each tool_choice, plus parallel_tool_calls false under `required`.
MODES: dict[str, dict[str, Any]] = {
    "auto": {"tool_choice": "auto"},
    "required": {"tool_choice": "required"},
    "named": {"tool_choice": {"type": "function", "function": {"name": NAMED}}},
    "none": {"tool_choice": "none"},
    "parallel_false": {"tool_choice": "required", "parallel_tool_calls": False},
}


@dataclass(frozen=True)
class Check:
    """One row of the table: `error` is None when the mode kept its contract."""

    model: str
    format: str
    mode: str
    stream: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Answer:
    """One choice, whether it came as JSON or as a stream of chunks."""

    content: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments)
    finish: str | None = None


@dataclass(frozen=True)
class Options:
    seeds: Sequence[int] = (0, 1)
    max_tokens: int = 160
    api_key: str | None = None
    timeout_s: float = 120.0


def run_selftest(base_url: str, options: Options = Options()) -> list[Check]:
    """Every model x mode x (non-stream, stream) of the gateway at `base_url`."""
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=options.timeout_s) as http:
        response = http.get("/v1/models")
        response.raise_for_status()
        checks: list[Check] = []
        for model in response.json()["data"]:
            for mode in MODES:
                checks.extend(_check_mode(http, model, mode, options))
        return checks


def _check_mode(http: httpx.Client, model: dict[str, Any], mode: str, options: Options) -> list[Check]:
    plain: str | None = None
    streamed: str | None = None
    for seed in options.seeds:
        body = _body(model["id"], mode, seed, options.max_tokens)
        whole, whole_error = _attempt(partial(_complete, http, body))
        plain = plain or whole_error or _contract(mode, whole)
        chunks, stream_error = _attempt(partial(_stream, http, body))
        streamed = streamed or stream_error or _contract(mode, chunks) or _same(whole, chunks, whole_error)
    name, fmt = model["id"], str(model.get("tool_format", "?"))
    return [Check(name, fmt, mode, False, plain), Check(name, fmt, mode, True, streamed)]


def _body(model: str, mode: str, seed: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "tools": list(PROBE_TOOLS),
        "seed": seed,
        "max_tokens": max_tokens,
        **MODES[mode],
    }


def _attempt(call: Callable[[], Answer]) -> tuple[Answer, str | None]:
    """The answer, or an empty one and why the request itself failed."""
    try:
        return call(), None
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return Answer(), f"request failed: {exc}"


def _complete(http: httpx.Client, body: dict[str, Any]) -> Answer:
    response = http.post("/v1/chat/completions", json=body)
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
    choice = response.json()["choices"][0]
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"].get("tool_calls") or []]
    return Answer(choice["message"].get("content") or "", calls, choice["finish_reason"])


def _stream(http: httpx.Client, body: dict[str, Any]) -> Answer:
    answer = Answer()
    parts: dict[int, list[str]] = {}
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {response.read()[:200]!r}")
        for event in _events(response.iter_lines()):
            _apply_chunk(event, answer, parts)
    answer.calls = [(p[0], "".join(p[1:])) for _, p in sorted(parts.items())]
    return answer


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event: dict[str, Any] = json.loads(line[len("data: ") :])
        if "error" in event:
            raise ValueError(f"error event in the stream: {event['error'].get('message')}")
        yield event


def _apply_chunk(chunk: dict[str, Any], answer: Answer, parts: dict[int, list[str]]) -> None:
    for choice in chunk.get("choices", []):
        delta = choice.get("delta", {})
        answer.content += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            entry = parts.setdefault(call["index"], [""])
            entry[0] += function.get("name") or ""
            entry.append(function.get("arguments") or "")
        answer.finish = choice.get("finish_reason") or answer.finish


def _contract(mode: str, answer: Answer) -> str | None:
    """Why `answer` breaks `mode`'s promise, or None."""
    for name, arguments in answer.calls:
        error = _invalid_call(name, arguments)
        if error:
            return error
    must_call = mode in ("required", "named", "parallel_false") and answer.finish != "length"
    if must_call and not answer.calls:
        return f"no tool call (finish_reason {answer.finish!r})"
    if mode == "none" and answer.calls:
        return f"called {answer.calls[0][0]} under tool_choice none"
    if mode == "named" and any(name != NAMED for name, _ in answer.calls):
        return f"called {[n for n, _ in answer.calls]}, not only {NAMED}"
    if mode in ("named", "parallel_false") and len(answer.calls) > 1:
        return f"{len(answer.calls)} calls where at most one is allowed"
    return _finish_agrees(answer)


def _invalid_call(name: str, arguments: str) -> str | None:
    if name not in SCHEMAS:
        return f"called undeclared tool {name!r}"
    try:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])
    except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
        return f"invalid arguments for {name}: {str(exc).splitlines()[0]}"
    return None


def _finish_agrees(answer: Answer) -> str | None:
    if answer.finish == "tool_calls" and not answer.calls:
        return "finish_reason tool_calls without calls"
    if answer.finish == "stop" and answer.calls:
        return "finish_reason stop with calls"
    if answer.finish not in ("stop", "length", "tool_calls"):
        return f"unexpected finish_reason {answer.finish!r}"
    return None


def _same(whole: Answer, streamed: Answer, whole_error: str | None) -> str | None:
    if whole_error is not None or whole == streamed:
        return None
    return f"stream differs from non-stream: {streamed} vs {whole}"


def format_table(checks: Sequence[Check]) -> str:
    rows = [("model", "format", "mode", "stream", "result")]
    rows += [
        (c.model, c.format, c.mode, "yes" if c.stream else "no", "ok" if c.ok else f"FAIL: {c.error}") for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4] for row in rows
    )


def exit_code(checks: Sequence[Check]) -> int:
    """0 when every mode held; 1 when one broke (or nothing was checked)."""
    return 0 if checks and all(c.ok for c in checks) else 1


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """`app` on a free loopback port for the duration of the block; yields its base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _wait_started(server: Any, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process gateway did not start")
        time.sleep(0.01)
