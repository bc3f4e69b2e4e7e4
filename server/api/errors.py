"""Rendering of every error to OpenAI's error shape, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.errors import GatewayError, InvalidRequest, Overloaded, Unauthorized

log = logging.getLogger("callgate")


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=_headers(exc))


def _headers(exc: GatewayError) -> dict[str, str] | None:
    if isinstance(exc, Overloaded):
        return {"Retry-After": f"{max(1, round(exc.retry_after))}"}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}  # RFC 6750: say which scheme to use
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        err = GatewayError(str(exc.detail))
        err.status, err.type, err.code = exc.status_code, "invalid_request_error", None
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(GatewayError("internal error; the request was not completed"))


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
