"""GET /v1/models (inference key), /health and /metrics (open unless configured otherwise; with
keys set, the open /health is a bare liveness answer), and the API docs behind the key.

Model cards follow vLLM's: adapters carry their `parent` (the base model); our extras are the
tool format, default tool_choice, evaluation scores and whether the adapter is loaded now."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.adapters.registry import AdapterRegistry
from server.api.deps import GatewayDep, HealthDep, InferenceDep, MetricsDep, has_key
from server.serving.served import Served

router = APIRouter()
_STARTED = int(time.time())


@router.get("/v1/models", dependencies=[InferenceDep])
async def list_models(gw: GatewayDep) -> dict[str, Any]:
    data = [_card(served, served.info.model, None) for served in gw.models.models.values()]
    if gw.models.adapters is not None:
        data += _adapter_cards(gw.models.adapters)
    return {"object": "list", "data": data}


def _card(served: Served, root: str, parent: str | None) -> dict[str, Any]:
    return {
        "id": served.name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "callgate",
        "root": root,
        "parent": parent,
        "max_model_len": served.info.context_length,
        "permission": [_permission()],
        "tool_format": served.format.name,
        "tool_format_source": served.provenance.format,
        "tool_call_trigger": served.format.envelope.open,
    }


def _adapter_cards(adapters: AdapterRegistry) -> list[dict[str, Any]]:
    cards = []
    for name, served in sorted(adapters.served.items()):
        manifest = adapters.adapters[name].manifest
        cards.append(
            _card(served, str(adapters.root / name), adapters.base.name)
            | {
                "tool_choice": manifest.tool_choice,
                "scores": manifest.scores,
                "base_model": manifest.base_model.id,
                "lora_rank": manifest.lora.rank,
                "loaded": adapters.pool.is_loaded(name),
                "pinned": name in adapters.pool.pinned,
            }
        )
    return cards


def _permission() -> dict[str, Any]:
    """vLLM's ModelPermission, for clients that read it."""
    return {
        "id": f"modelperm-{_STARTED}",
        "object": "model_permission",
        "created": _STARTED,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


@router.get("/health", dependencies=[HealthDep])
async def health(request: Request, gw: GatewayDep) -> dict[str, Any]:
    if not has_key(request, gw):  # with keys set, the open answer only says the gateway is alive
        return {"status": "ok"}
    return {"status": "ok", "models": gw.models.names()}


def keyed_docs(app: FastAPI) -> None:
    """/openapi.json, /docs and /redoc behind the inference key (a browser must send it too)."""
    keyed = APIRouter(dependencies=[InferenceDep], include_in_schema=False)
    keyed.get("/openapi.json")(lambda: JSONResponse(app.openapi()))
    keyed.get("/docs")(lambda: get_swagger_ui_html(openapi_url="/openapi.json", title="callgate"))
    keyed.get("/redoc")(lambda: get_redoc_html(openapi_url="/openapi.json", title="callgate"))
    app.include_router(keyed)


@router.get("/metrics", dependencies=[MetricsDep])
async def metrics(gw: GatewayDep) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
