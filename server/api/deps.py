"""The routes' dependencies: the Gateway (what one app serves) and the API-key checks, as typed
`Annotated[..., Depends(...)]` aliases. The app factory (app.py) imports the routers and the
routers import these, so the two never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from server.api.middleware import Lifecycle
from server.auth import KeyRing, Scope
from server.config import Settings
from server.errors import GatewayError
from server.metrics import Metrics
from server.serving.registry import ModelRegistry


@dataclass
class Gateway:
    settings: Settings
    models: ModelRegistry
    metrics: Metrics
    keys: KeyRing
    lifecycle: Lifecycle


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def credential(request: Request) -> str | None:
    """The Authorization header, or Anthropic's `x-api-key` (what its SDK sends) as a Bearer key."""
    authorization = request.headers.get("authorization")
    api_key = request.headers.get("x-api-key")
    if authorization is None and api_key is not None:
        return "Bearer " + api_key
    return authorization


def require_inference(request: Request, gw: GatewayDep) -> None:
    gw.keys.authorize(credential(request), Scope.INFERENCE)


def require_admin(request: Request, gw: GatewayDep) -> None:
    gw.keys.authorize(credential(request), Scope.ADMIN)


def require_health_access(request: Request, gw: GatewayDep) -> None:
    if not gw.settings.auth.open_health:
        require_inference(request, gw)


def require_metrics_access(request: Request, gw: GatewayDep) -> None:
    auth = gw.settings.auth
    if not (auth.open_metrics if auth.open_metrics is not None else not auth.enabled):
        require_admin(request, gw)  # metrics describe the whole deployment: operators only


def has_key(request: Request, gw: GatewayDep) -> bool:
    """Whether the request carries a valid key (always true while no key is configured)."""
    try:
        gw.keys.authorize(request.headers.get("authorization"), Scope.INFERENCE)
    except GatewayError:
        return False
    return True


# Route dependencies: `dependencies=[InferenceDep]` on a router or route.
InferenceDep = Depends(require_inference)
AdminDep = Depends(require_admin)
HealthDep = Depends(require_health_access)
MetricsDep = Depends(require_metrics_access)
