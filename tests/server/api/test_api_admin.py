"""The adapter admin API over real HTTP (uvicorn on loopback, the official openai client), on
the typed fake engine: vLLM's routes and answers, the admin key, adapters in /v1/models, a
request by adapter name, unload -> 404, and the state across a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from server.api.app import create_app
from server.metrics import Metrics
from server.serving.build import build_registry
from tests.support.adapter_folders import adapter_settings, base_file, make_adapter
from tests.support.fakes import FakeEngine
from tests.support.live import Live, running

INFERENCE_KEY, ADMIN_KEY = "sk-inference-adapters-0123", "sk-admin-adapters-4567"
GOOD = '<tool_call>\n{"name": "track_order", "arguments": {"order_id": 7}}\n</tool_call>'
TRACK = {
    "type": "function",
    "function": {
        "name": "track_order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]},
    },
}
USER = [{"role": "user", "content": "where is order 7?"}]


class Gateway:
    """A gateway over a fake engine and a tmp adapters folder, restartable on the same folder."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.base = base_file(tmp)
        self.root = tmp / "adapters"
        self.engine = FakeEngine()

    def start(self) -> Iterator[Live]:
        settings = adapter_settings(
            self.base,
            self.root,
            **{"auth.api_keys": [INFERENCE_KEY], "auth.admin_keys": [ADMIN_KEY], "adapters.max_loaded": 1},
        )
        metrics = Metrics()
        self.engine = FakeEngine()
        app = create_app(settings, build_registry(settings, metrics, self.engine), metrics)
        yield from running(app, settings, metrics)


@pytest.fixture()
def gw(tmp_path: Path) -> Gateway:
    gateway = Gateway(tmp_path)
    make_adapter(gateway.root, "support", gateway.base, tool_choice="required", scores={"bfcl_simple": 0.81})
    return gateway


def _admin(live: Live, route: str, body: dict[str, Any], key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{live.v1}/{route}", json=body, headers=headers, timeout=30)


def _client(live: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.v1, api_key=INFERENCE_KEY, max_retries=0, timeout=30)


def test_admin_routes_need_the_admin_key(gw: Gateway) -> None:
    for live in gw.start():
        body = {"lora_name": "support", "lora_path": "support"}
        assert _admin(live, "unload_lora_adapter", body, key=None).status_code == 401
        forbidden = _admin(live, "unload_lora_adapter", body, key=INFERENCE_KEY)
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "insufficient_scope"
        assert _admin(live, "load_lora_adapter", body, key=INFERENCE_KEY).status_code == 403
        assert gw.engine.unloads == [] and gw.engine.loads == []


def test_models_list_adapters_with_parent_format_and_scores(gw: Gateway) -> None:
    for live in gw.start():
        with _client(live) as client:
            cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert set(cards) == {"base", "support"}
    card = cards["support"]
    assert card["parent"] == "base" and cards["base"]["parent"] is None
    assert card["tool_format"] == "hermes" and card["tool_choice"] == "required"
    assert card["scores"] == {"bfcl_simple": 0.81} and card["loaded"] is False and card["pinned"] is False
    assert card["permission"][0]["object"] == "model_permission" and card["object"] == "model"


def test_load_serve_unload_and_restart(gw: Gateway) -> None:
    for live in gw.start():
        make_adapter(gw.root, "orders", gw.base)  # exported while the gateway runs
        with _client(live) as client:
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="orders", messages=USER)  # type: ignore[arg-type]
            ok = _admin(live, "load_lora_adapter", {"lora_name": "orders", "lora_path": str(gw.root / "orders")})
            assert ok.status_code == 200 and ok.text == "Success: LoRA adapter 'orders' added successfully."
            assert ok.headers["content-type"].startswith("text/plain")
            again = _admin(live, "load_lora_adapter", {"lora_name": "orders", "lora_path": "orders"})
            assert again.status_code == 400 and "set 'load_inplace' to True" in again.json()["error"]["message"]

            gw.engine.scripts.append(([GOOD], "stop"))
            answer = client.chat.completions.create(
                model="orders",
                messages=USER,
                tools=[TRACK],  # type: ignore
                tool_choice="required",
            )
            assert answer.model == "orders" and answer.choices[0].message.tool_calls is not None
            assert gw.engine.requests[-1].adapter == "orders"
            # "support" binds tool_choice "required": a request with tools and no tool_choice gets it.
            gw.engine.scripts.append(([GOOD], "stop"))
            bound = client.chat.completions.create(model="support", messages=USER, tools=[TRACK])  # type: ignore
            assert bound.choices[0].finish_reason == "tool_calls"
            assert gw.engine.unloads == ["orders"]  # adapters.max_loaded=1: the older one made room
            gw.engine.scripts.append((["Sure", ", checking."], "stop"))
            streamed = client.chat.completions.create(model="support", messages=USER, stream=True)  # type: ignore
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Sure, checking."
            pool = live.app.state.gateway.models.adapters.pool
            assert pool.refs("support") == 0 and pool.is_loaded("support")  # the stream gave its lease back

            gone = _admin(live, "unload_lora_adapter", {"lora_name": "orders"})
            assert gone.status_code == 200 and gone.text == "Success: LoRA adapter 'orders' removed successfully."
            with pytest.raises(openai.NotFoundError) as info:
                client.chat.completions.create(model="orders", messages=USER)  # type: ignore[arg-type]
            assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
            missing = _admin(live, "unload_lora_adapter", {"lora_name": "orders"})
            assert missing.status_code == 404
            assert missing.json()["error"]["message"] == "The lora adapter 'orders' cannot be found."
        metrics = httpx.get(
            live.base_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ).text
        assert 'adapter="orders"' in metrics
        assert (
            'callgate_tool_calls_total{adapter="support",mode="required",model="support",outcome="valid",'
            'tool="track_order"} 1.0'
        ) in metrics  # the manifest's tool_choice, and the adapter label
    for live in gw.start():  # a restart on the same folder
        with _client(live) as client:
            assert sorted(m.id for m in client.models.list().data) == ["base", "support"]


def test_paths_outside_the_adapters_folder_are_400(gw: Gateway) -> None:
    outside = make_adapter(gw.tmp / "elsewhere", "stray", gw.base)
    for live in gw.start():
        for body in [
            {"lora_name": "stray", "lora_path": str(outside)},
            {"lora_name": "stray", "lora_path": "../elsewhere/stray"},
            {"lora_name": "passwd", "lora_path": "/etc/passwd"},
            {"lora_name": "support", "lora_path": ""},
        ]:
            r = _admin(live, "load_lora_adapter", body)
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", body
        missing_field = _admin(live, "load_lora_adapter", {"lora_name": "x"})
        assert missing_field.status_code == 400  # the gateway's validation errors are 400s
        assert gw.engine.loads == []
