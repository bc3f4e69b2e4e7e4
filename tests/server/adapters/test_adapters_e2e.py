"""From `training.export.adapter` to served without a restart, for real: a PEFT LoRA on the tiny model
exported into an adapters folder, loaded through the admin API into a running gateway (real
llama.cpp, uvicorn on loopback, the official openai client), answering differently from the
base model, unloaded (404), and the registry's state surviving restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from peft import LoraConfig

from server.api.app import create_app
from server.config import load_settings
from server.metrics import Metrics
from server.serving.build import build_registry
from tests.support.live import Live, running
from tests.support.lora_helpers import ALL_LINEAR, PEFT_WARNINGS, make_peft_adapter
from training.demo.tiny import TinyModel
from training.export.adapter import ExportOptions, export_adapter

pytestmark = [pytest.mark.slow, *PEFT_WARNINGS]

ADMIN_KEY = "sk-admin-e2e-adapters-0123"
NAME = "support-e2e"
TRACK = {
    "type": "function",
    "function": {
        "name": "track_order",
        "description": "Where an order is.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "integer", "minimum": 1}},
            "required": ["order_id"],
            "additionalProperties": False,
        },
    },
}
USER = [{"role": "user", "content": "Where is order 12345?"}]


def _gateway(tiny: TinyModel, adapters: Path) -> Iterator[Live]:
    settings = load_settings(
        None,
        **{
            "model.path": tiny.gguf,
            "model.served_name": "tiny",
            "model.threads": 2,
            "adapters.dir": adapters,
            "auth.admin_keys": [ADMIN_KEY],
        },
    )
    metrics = Metrics()
    app = create_app(settings, build_registry(settings, metrics), metrics)
    yield from running(app, settings, metrics)


def _admin(live: Live, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{live.v1}/{route}", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)


def _client(live: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.v1, api_key=ADMIN_KEY, max_retries=0, timeout=120)


def _text(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(model=model, messages=USER, max_tokens=16, temperature=0)  # type: ignore
    return answer.choices[0].message.content or ""


def _ids(client: openai.OpenAI) -> list[str]:
    return sorted(m.id for m in client.models.list().data)


def test_exported_adapter_is_served_without_a_restart(tiny_model: TinyModel, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    peft_dir = make_peft_adapter(
        tiny_model, LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR), tmp_path / "peft", seed=3
    )
    for live in _gateway(tiny_model, adapters):
        with _client(live) as client:
            base_text = _text(client, "tiny")
            assert _ids(client) == ["tiny"]
            export_adapter(
                peft_dir,
                tiny_model.hf_dir,
                NAME,
                adapters,
                ExportOptions(base_gguf=tiny_model.gguf, scores={"bfcl_simple": 0.5}),
            )
            loaded = _admin(live, "load_lora_adapter", {"lora_name": NAME, "lora_path": str(adapters / NAME)})
            assert loaded.status_code == 200, loaded.text
            [card] = [m.model_dump() for m in client.models.list().data if m.id == NAME]
            assert card["parent"] == "tiny" and card["tool_format"] == "hermes" and card["loaded"] is True
            assert card["scores"] == {"bfcl_simple": 0.5}

            assert _text(client, NAME) != base_text  # the LoRA changes what the model says
            call = client.chat.completions.create(
                model=NAME,
                messages=USER,
                tools=[TRACK],  # type: ignore
                tool_choice="required",
                max_tokens=48,
                seed=1,
            )
            [tool_call] = call.choices[0].message.tool_calls or []
            assert call.model == NAME and tool_call.function.name == "track_order"
            assert isinstance(json.loads(tool_call.function.arguments)["order_id"], int)

            unloaded = _admin(live, "unload_lora_adapter", {"lora_name": NAME})
            assert unloaded.status_code == 200, unloaded.text
            with pytest.raises(openai.NotFoundError) as info:
                _text(client, NAME)
            body: Any = info.value.body
            assert (
                body
                == {
                    "message": body["message"],
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
                and NAME in body["message"]
            )
            assert _text(client, "tiny") == base_text  # the base model is untouched
        metrics = httpx.get(
            live.base_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ).text
        assert f'adapter="{NAME}"' in metrics and f'model="{NAME}"' in metrics

    for live in _gateway(tiny_model, adapters):  # restart: the unload is remembered
        with _client(live) as client:
            assert _ids(client) == ["tiny"]
            assert _admin(live, "load_lora_adapter", {"lora_name": NAME, "lora_path": NAME}).status_code == 200
    for live in _gateway(tiny_model, adapters):  # and so is the load
        with _client(live) as client:
            assert _ids(client) == [NAME, "tiny"]
            assert _text(client, NAME) != base_text  # loaded lazily on its first request
