"""API keys and tenants.

With no key configured the server is open and every request belongs to the
anonymous tenant ``""``. With keys (``--api-key``, or a key file mapping keys
to tenants) every path but ``/health`` needs ``Authorization: Bearer <key>``
(or ``x-api-key``), and the request runs as the key's tenant. Program ids are
namespaced per tenant (:func:`scoped_id`) before they reach the
router or the engine, so one tenant can neither see nor end nor reprioritise
another tenant's program, even by guessing its id; client-chosen call ids
(``x-agentrt-call``) are namespaced the same way, so a tenant cannot abort
another tenant's call by reusing its id.

Key file (TOML)::

    [keys]
    "sk-team-a-1" = "team-a"
    "sk-team-b-1" = "team-b"

    [tenants.team-a]          # optional: this tenant's share (see TenantLimits)
    max_concurrent_requests = 64
    max_queued_requests = 64
    max_programs = 5000
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from agentrt.config import ConfigError
from agentrt.serving.http.errors import error_response, unauthorized

DEFAULT_TENANT = "default"
OPEN_PATHS = frozenset({"/health"})


def _digest(key: str) -> bytes:
    # Keys are looked up by hash, so the lookup time does not depend on how much of a key matched.
    return hashlib.sha256(key.encode()).digest()


class TenantLimits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One tenant's share of the server (``[tenants.NAME]`` in the key file); unset: the server's default share."""

    max_concurrent_requests: int | None = None
    max_queued_requests: int | None = None
    max_programs: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_concurrent_requests", "max_programs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ValueError("max_queued_requests must be >= 0")


class KeyRing:
    """Which tenant each API key belongs to, and the shares the key file gives tenants."""

    def __init__(
        self, keys: dict[str, str] | None = None, limits: dict[str, TenantLimits] | None = None
    ) -> None:
        self._tenants = {_digest(k): t for k, t in (keys or {}).items()}
        self.tenants = frozenset((keys or {}).values())
        self.limits = limits or {}

    @classmethod
    def from_config(cls, api_keys: list[str], api_key_file: str | None) -> KeyRing:
        keys = dict.fromkeys(api_keys, DEFAULT_TENANT)
        limits: dict[str, TenantLimits] = {}
        if api_key_file is not None:
            keys.update(load_key_file(api_key_file))
            limits = load_tenant_limits(api_key_file)
        return cls(keys, limits)

    @property
    def enabled(self) -> bool:
        return bool(self._tenants)

    def tenant(self, key: str) -> str | None:
        return self._tenants.get(_digest(key))


def load_key_file(path: str | Path) -> dict[str, str]:
    """Read ``[keys]`` (key -> tenant) from a TOML file; a clear error when it is malformed."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read API key file {path}: {e}") from e
    keys = doc.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise ConfigError(
            f"API key file {path} needs a non-empty [keys] table mapping keys to tenants"
        )
    for key, tenant in keys.items():
        if not isinstance(tenant, str) or not tenant or "/" in tenant:
            raise ConfigError(
                f"API key file {path}: tenant of a key must be a non-empty name without '/'"
            )
        if not key:
            raise ConfigError(f"API key file {path}: empty key")
    return dict(keys)


def load_tenant_limits(path: str | Path) -> dict[str, TenantLimits]:
    """Read the optional ``[tenants.NAME]`` tables of a key file."""
    try:
        with open(path, "rb") as f:
            tables = tomllib.load(f).get("tenants", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read API key file {path}: {e}") from e
    if not isinstance(tables, dict):
        raise ConfigError(f"API key file {path}: [tenants] must be a table of tenant tables")
    try:
        return {str(name): msgspec.convert(table, TenantLimits) for name, table in tables.items()}
    except (msgspec.ValidationError, ValueError) as e:
        raise ConfigError(f"API key file {path}: [tenants]: {e}") from e


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1")
    return None


class AuthMiddleware:
    """Reject requests without a valid key; put the caller's tenant in ``scope["state"]["tenant"]``."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.keys.enabled or scope["path"] in OPEN_PATHS:
            state["tenant"] = ""
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        tenant = self.keys.tenant(key) if key is not None else None
        if tenant is None:
            message = "missing API key" if key is None else "invalid API key"
            response = error_response(unauthorized(message), {"www-authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        state["tenant"] = tenant
        await self.app(scope, receive, send)


def scoped_id(tenant: str, client_id: str) -> str:
    """The id the router and engine know a tenant's program (or call) by.

    Client ids cannot contain ``/`` (see :mod:`agentrt.protocol.headers`), so
    ``tenant/id`` never collides with another tenant's id, scoped or not.
    """
    return f"{tenant}/{client_id}" if tenant else client_id


def unscoped_id(tenant: str, scoped: str) -> str:
    prefix = f"{tenant}/"
    return scoped[len(prefix) :] if tenant and scoped.startswith(prefix) else scoped
