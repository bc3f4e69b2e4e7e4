"""GET /v1/models (inference key), /health and /metrics (open unless configured otherwise)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.app import GatewayDep, HealthDep, InferenceDep, MetricsDep

router = APIRouter()
_STARTED = int(time.time())


@router.get("/v1/models", dependencies=[InferenceDep])
async def list_models(gw: GatewayDep) -> dict[str, Any]:
    data = [
        {
            "id": name,
            "object": "model",
            "created": _STARTED,
            "owned_by": "callgate",
            "root": served.info.model,
            "parent": None,
            "max_model_len": served.info.context_length,
            "tool_format": served.format.name,
            "tool_format_source": served.format_source,
            "tool_call_trigger": served.format.envelope.open,
        }
        for name, served in gw.models.models.items()
    ]
    return {"object": "list", "data": data}


@router.get("/health", dependencies=[HealthDep])
async def health(gw: GatewayDep) -> dict[str, Any]:
    return {"status": "ok", "models": sorted(gw.models.models)}


@router.get("/metrics", dependencies=[MetricsDep])
async def metrics(gw: GatewayDep) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
