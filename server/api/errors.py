"""Rendering of every error, in one place: OpenAI's shape `{"error": {...}}` (chat completions,
Responses), Anthropic's `{"type": "error", "error": {...}}` under /v1/messages. Every 4xx is
logged at INFO with its message and param (never the prompt, never a key)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.errors import GatewayError, InvalidRequest, Overloaded, Unauthorized

log = logging.getLogger("callgate")


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_response(exc: GatewayError, request: Request) -> JSONResponse:
    log_refusal(request.method, request.url.path, exc)
    return JSONResponse(error_body(exc, request.url.path), status_code=exc.status, headers=_headers(exc))


def error_body(exc: GatewayError, path: str) -> dict[str, object]:
    """The error in the shape of the API that `path` belongs to."""
    return anthropic_error(exc) if is_messages_api(path) else exc.to_dict()


def is_messages_api(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def anthropic_error(exc: GatewayError) -> dict[str, object]:
    kind = _ANTHROPIC_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def log_refusal(method: str, path: str, exc: GatewayError) -> None:
    """Why a request got a 4xx, for the operator: the message and param only."""
    if 400 <= exc.status < 500:
        log.info("%s %s -> %d %s: %s (param: %s)", method, path, exc.status, exc.code, exc.message, exc.param)


def _headers(exc: GatewayError) -> dict[str, str] | None:
    if isinstance(exc, Overloaded):
        return {"Retry-After": f"{max(1, round(exc.retry_after))}"}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}  # RFC 6750: say which scheme to use
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc), request)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        err = GatewayError(str(exc.detail))
        err.status, err.type, err.code = exc.status_code, "invalid_request_error", None
        return error_response(err, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(GatewayError("internal error; the request was not completed"), request)


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    """Pydantic's errors as one readable message; the first error's location is the param."""
    parts, params = [], []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        params.append(loc)
        if err.get("type") == "extra_forbidden":
            parts.append(f"{loc}: unsupported field; remove it")
        elif err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('msg')})")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return InvalidRequest("; ".join(parts) or "invalid request", param=params[0] if params else None)
