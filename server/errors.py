"""The one error family. Every failure a client can see is a GatewayError subclass;
api/errors.py renders them to OpenAI's error shape (JSON or a final SSE event) in one place.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedFeature(InvalidRequest):
    """A field or schema keyword that would change behaviour but cannot be honoured."""

    code = "unsupported"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Overloaded(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(GatewayError):
    status = 502
    type = "server_error"
    code = "engine_error"


class Timeout(GatewayError):
    status = 504
    type = "server_error"
    code = "timeout"


class ConfigError(Exception):
    """Refused settings at start-up (not a request error)."""
