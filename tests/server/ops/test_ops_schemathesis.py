"""Schemathesis fuzzes every operation of the gateway's own OpenAPI schema, in process (ASGI),
against the tiny model with small token limits: thousands of generated requests, no 5xx, and
every error in OpenAI's shape."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.api.app import create_app
from server.config import load_settings
from server.metrics import Metrics
from server.serving.build import build_registry

KEY = "sk-fuzz"
EXAMPLES = {
    ("POST", "/v1/chat/completions"): 1500,
    ("POST", "/apply-template"): 500,
    ("GET", "/v1/models"): 20,
    ("GET", "/health"): 20,
    ("GET", "/metrics"): 20,
}


def openai_error_shape(status: int, body: Any) -> None:
    """The check: no 5xx; an error is exactly {"error": {message, type, param, code}}."""
    assert status < 500, f"server error {status}: {body}"
    if status < 400:
        return
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)


@pytest.fixture()
def schema(tiny_model: Any) -> Any:
    """A fresh app per test: the in-process client runs the app's lifespan, whose end closes the engine."""
    limits = {"limits.default_max_tokens": 4, "limits.max_tokens": 8, "limits.compile_timeout_s": 10}
    cfg = load_settings(
        None, **{"model.path": tiny_model.gguf, "model.served_name": "tiny", "auth.api_keys": [KEY], **limits}
    )
    metrics = Metrics()
    app = create_app(cfg, build_registry(cfg, metrics), metrics)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {KEY}"})


@pytest.mark.slow
def test_fuzzed_requests_get_no_5xx_and_openai_shaped_errors(schema: Any) -> None:
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}  # first line of the problem -> a request that shows it
    for (method, path), examples in EXAMPLES.items():
        _fuzz(schema[path][method], examples, statuses, failures)
    total = sum(statuses.values())
    print(
        f"\nschemathesis: {total} requests, statuses {dict(sorted(statuses.items()))}, "
        f"{len(failures)} distinct failures"
    )
    assert not failures, "\n".join(f"{problem}\n    {repro}" for problem, repro in failures.items())
    assert total >= 2000
    assert statuses[200] > 0 and statuses[400] > 0  # both valid and invalid requests were made


def anthropic_error_shape(status: int, body: Any) -> None:
    """The check under /v1/messages: no 5xx; an error is {"type": "error", "error": {type, message}}."""
    assert status < 500, f"server error {status}: {body}"
    if status < 400:
        return
    assert isinstance(body, dict) and body.get("type") == "error" and set(body) == {"type", "error"}, body
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body


@pytest.mark.slow
def test_fuzzed_responses_and_messages_get_no_5xx_and_their_own_error_shapes(schema: Any) -> None:
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}
    _fuzz(schema["/v1/responses"]["POST"], 300, statuses, failures)
    _fuzz(schema["/v1/messages"]["POST"], 300, statuses, failures, anthropic_error_shape)
    _fuzz(schema["/v1/messages/count_tokens"]["POST"], 100, statuses, failures, anthropic_error_shape)
    print(f"\nschemathesis (responses, messages): statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(f"{problem}\n    {repro}" for problem, repro in failures.items())
    assert statuses[400] > 0


def _fuzz(
    operation: Any, examples: int, statuses: Counter[int], failures: dict[str, str], check: Any = openai_error_shape
) -> None:
    @given(
        case=operation.as_strategy(),
        authorized=st.sampled_from([True] * 9 + [False]),
        served=st.sampled_from([True] * 4 + [False]),
    )
    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any, authorized: bool, served: bool) -> None:
        if served and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = "tiny"  # mostly past the 404, into translation and generation
        headers = {"Authorization": f"Bearer {KEY}"} if authorized else {}
        try:
            response = case.call(headers=headers)
            statuses[response.status_code] += 1
            check(response.status_code, _json(response))
        except Exception as exc:  # noqa: BLE001 - collected, so one run reports every distinct problem
            statuses[500] += 0 if isinstance(exc, AssertionError) else 1
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            failures.setdefault(problem, f"{case.method} {case.path} {json.dumps(case.body)[:400]}")

    run()


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:  # /metrics is text
        return None


def test_message_without_content_is_a_400(schema: Any) -> None:
    response = (
        schema["/v1/chat/completions"]["POST"]
        .Case(body={"model": "tiny", "messages": [{"role": "system"}]})
        .call(headers={"Authorization": f"Bearer {KEY}"})
    )
    assert response.status_code == 400
