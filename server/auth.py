"""API keys: which scope (inference or admin) a bearer token grants, compared in constant time.

Keys come from `auth.api_keys` / `auth.admin_keys` (settings or CALLGATE_AUTH__* variables) and
are held only as SHA-256 digests, so neither logs nor reprs can show them. No keys configured
means the gateway is open. Knows nothing of HTTP frameworks: api/app.py turns this into
FastAPI dependencies.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging

from server.config import AuthSection, Settings, is_loopback
from server.errors import GatewayError, Unauthorized

log = logging.getLogger("callgate")
_BEARER = "bearer "


class Scope(enum.IntEnum):
    """Ordered: a higher scope may do everything a lower one may."""

    INFERENCE = 1
    ADMIN = 2


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class MissingKey(Unauthorized):
    """No or malformed Authorization header (rendered with WWW-Authenticate: Bearer)."""


class KeyRing:
    def __init__(self, auth: AuthSection):
        self._admin = [_digest(k.get_secret_value()) for k in auth.admin_keys]
        self._inference = [_digest(k.get_secret_value()) for k in auth.api_keys]
        self.enabled = auth.enabled

    def scope_of(self, token: str) -> Scope | None:
        """The scope `token` grants, or None. Every key is compared, so timing tells nothing."""
        given = _digest(token)
        admin = _matches_any(given, self._admin)
        inference = _matches_any(given, self._inference)
        if admin:
            return Scope.ADMIN
        return Scope.INFERENCE if inference else None

    def authorize(self, authorization: str | None, needed: Scope) -> None:
        """Raise 401 (no or unknown key) or 403 (known key, lower scope) unless allowed."""
        if not self.enabled:
            return
        if authorization is None or not authorization.lower().startswith(_BEARER):
            raise MissingKey("missing API key; send the header `Authorization: Bearer <key>`")
        scope = self.scope_of(authorization[len(_BEARER) :].strip())
        if scope is None:
            raise Unauthorized("invalid API key; check the key you send as `Authorization: Bearer <key>`")
        if scope < needed:
            raise Forbidden(f"this key cannot use {needed.name.lower()} routes; use an admin key")


def warn_if_exposed(settings: Settings) -> None:
    """A gateway without keys on a non-loopback address is open to its whole network."""
    if settings.auth.enabled or is_loopback(settings.server.host):
        return
    log.warning(
        "serving on %s without API keys: anyone who can reach this address can use it; "
        "set auth.api_keys (or CALLGATE_AUTH__API_KEYS) or bind 127.0.0.1",
        settings.server.host,
    )


def _digest(key: str) -> bytes:
    # Equal-length digests: compare_digest would leak a key's length on raw strings.
    return hashlib.sha256(key.encode()).digest()


def _matches_any(given: bytes, keys: list[bytes]) -> bool:
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)  # no early exit
    return found
