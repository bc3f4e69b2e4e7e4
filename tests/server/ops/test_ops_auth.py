"""API keys against a real gateway: 401 in OpenAI's shape with WWW-Authenticate, inference and
admin scopes, open /health and /metrics by default, keys from the environment, never logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from server.api.app import create_app
from server.api.deps import AdminDep
from server.auth import KeyRing, Scope
from server.config import load_settings
from server.errors import ConfigError
from server.metrics import Metrics
from server.serving.build import build_registry
from tests.support.live import PING, Live, running

INFERENCE_KEY, ADMIN_KEY = "sk-inference-0123456789", "sk-admin-9876543210-long"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def locked(tiny_model: Any) -> Iterator[Live]:
    settings = load_settings(
        None,
        **{
            "model.path": tiny_model.gguf,
            "model.served_name": "tiny",
            "auth.api_keys": [INFERENCE_KEY],
            "auth.admin_keys": [ADMIN_KEY],
            "auth.open_metrics": False,
        },
    )
    metrics = Metrics()
    app = create_app(settings, build_registry(settings, metrics), metrics)
    app.get("/admin/ping", dependencies=[AdminDep])(lambda: {"ok": True})  # admin routes come later
    yield from running(app, settings, metrics)


def _get(live: Live, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(live.base_url + path, headers=headers, timeout=30)


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz", "Bearer"])
def test_no_or_bad_key_is_401_in_openai_shape(locked: Live, header: str | None) -> None:
    r = httpx.post(
        locked.v1 + "/chat/completions",
        json={"model": "tiny", "messages": USER},
        headers={"Authorization": header} if header else {},
        timeout=30,
    )
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {
        "error": {
            "message": r.json()["error"]["message"],
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert "Authorization: Bearer" in r.json()["error"]["message"]  # says how to fix it


def test_inference_key_serves_the_openai_client(locked: Live) -> None:
    with openai.OpenAI(base_url=locked.v1, api_key=INFERENCE_KEY, max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == ["tiny"]
        r = client.chat.completions.create(
            model="tiny", messages=USER, tools=[PING], tool_choice="required", max_tokens=30, seed=1
        )
        assert r.choices[0].finish_reason in ("tool_calls", "length")
    with (
        openai.OpenAI(base_url=locked.v1, api_key="sk-nope", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()


def test_admin_scope_is_separate(locked: Live) -> None:
    assert _get(locked, "/admin/ping", None).status_code == 401
    denied = _get(locked, "/admin/ping", INFERENCE_KEY)
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    assert _get(locked, "/admin/ping", ADMIN_KEY).json() == {"ok": True}
    assert _get(locked, "/v1/models", ADMIN_KEY).status_code == 200  # admin keys may infer too


def test_health_open_metrics_closed_as_configured(locked: Live) -> None:
    assert _get(locked, "/health", None).status_code == 200  # auth.open_health defaults to true
    assert _get(locked, "/metrics", None).status_code == 401  # auth.open_metrics: false here
    assert _get(locked, "/metrics", INFERENCE_KEY).status_code == 403
    assert "callgate_" in _get(locked, "/metrics", ADMIN_KEY).text


@pytest.mark.parametrize("value", [f"{INFERENCE_KEY}, other-key", f'["{INFERENCE_KEY}", "other-key"]'])
def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CALLGATE_AUTH__API_KEYS", value)
    keys = KeyRing(load_settings(None).auth)
    assert keys.scope_of(INFERENCE_KEY) is Scope.INFERENCE and keys.scope_of("other-key") is Scope.INFERENCE
    assert keys.scope_of("other") is None and keys.scope_of("") is None


def test_keys_are_never_shown(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CALLGATE_AUTH__ADMIN_KEYS", ADMIN_KEY)
    settings = load_settings(None)
    assert ADMIN_KEY not in repr(settings) and ADMIN_KEY not in str(settings.model_dump())
    monkeypatch.setenv("CALLGATE_AUTH__API_KEYS", f'["{INFERENCE_KEY}", ""]')
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert INFERENCE_KEY not in str(info.value) and "empty" in str(info.value)


def test_open_non_loopback_gateway_warns(caplog: pytest.LogCaptureFixture) -> None:
    from server.auth import warn_if_exposed

    with caplog.at_level(logging.WARNING, logger="callgate"):
        warn_if_exposed(load_settings(None, **{"server.host": "127.0.0.1"}))
        assert not caplog.records
        warn_if_exposed(load_settings(None, **{"server.host": "0.0.0.0", "auth.api_keys": [INFERENCE_KEY]}))
        assert not caplog.records
        warn_if_exposed(load_settings(None, **{"server.host": "0.0.0.0", "auth.allow_open": True}))
    assert "without API keys" in caplog.text  # open on purpose: still said at every start


def test_unlocked_gateway_needs_no_key(gateway: Live) -> None:
    assert httpx.get(gateway.v1 + "/models", timeout=30).status_code == 200
