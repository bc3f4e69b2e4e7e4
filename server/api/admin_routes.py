"""Adapter admin routes, behind the admin key, with vLLM's names, bodies and answers:
POST /v1/load_lora_adapter and POST /v1/unload_lora_adapter (plain-text success, OpenAI-shaped
errors). `lora_path` must be an adapter folder inside adapters.dir (server/adapters/registry.py checks)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from server.adapters.registry import AdapterRegistry
from server.api.deps import AdminDep, Gateway, GatewayDep
from server.errors import InvalidRequest


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str = Field(description="the adapter folder inside adapters.dir, or its bare name")
    load_inplace: bool = False
    pinned: bool | None = Field(None, description="callgate: never evict it (persisted); unset keeps the current")


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None  # vLLM's; names identify adapters here


router = APIRouter(dependencies=[AdminDep])


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoRAAdapterRequest, gw: GatewayDep) -> str:
    await _adapters(gw).load(body.lora_name, body.lora_path, body.load_inplace, body.pinned)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, gw: GatewayDep) -> str:
    if not body.lora_name:
        raise InvalidRequest("'lora_name' needs to be provided to unload a LoRA adapter.", param="lora_name")
    await _adapters(gw).unload(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


def _adapters(gw: Gateway) -> AdapterRegistry:
    if gw.models.adapters is None:
        raise InvalidRequest("this gateway serves no adapters (no adapter registry)", param="lora_name")
    return gw.models.adapters
