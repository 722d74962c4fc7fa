"""What every endpoint shares: the server state and the caller's tenant."""

from __future__ import annotations

import logging

from starlette.requests import Request

from agentrt.protocol.engine import EngineClient, EngineError, EngineStats
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.auth import KeyRing
from agentrt.serving.http.limits import RequestLimiter, TenantLimiter
from agentrt.serving.http.metrics import ServerMetrics
from agentrt.serving.http.programs import ProgramDirectory
from agentrt.serving.http.response_store import ResponseStore


class ServerState:
    """Everything the endpoints share; one per app, at ``app.state.server``."""

    def __init__(self, engine: EngineClient, config: ServerConfig, keys: KeyRing) -> None:
        self.engine = engine
        self.config = config
        self.keys = keys
        self.log_level = logging.getLevelNamesMapping()[config.request_log_level.upper()]
        server = RequestLimiter(
            config.max_concurrent_requests,
            config.max_queued_requests,
            config.queue_timeout,
            config.retry_after,
        )
        self.limiter = TenantLimiter(server, self._tenant_share)
        self.metrics = ServerMetrics(
            self._engine_stats, lambda: self.limiter.queued, lambda: len(self.programs)
        )
        self.programs = ProgramDirectory(self.metrics, max_programs=self._tenant_programs)
        self.responses = ResponseStore(config.responses_store_size, config.responses_store_bytes)

    def _tenant_share(self, tenant: str) -> tuple[int, int]:
        """A tenant's in-flight and queued requests: its key-file entry, else the config's, else
        half the server's when several tenants share it (so no one of them can take it all)."""
        config, own = self.config, self.keys.limits.get(tenant)
        shared = len(self.keys.tenants) >= 2
        concurrent = (own and own.max_concurrent_requests) or config.tenant_max_concurrent_requests
        if concurrent is None:
            concurrent = (
                max(1, config.max_concurrent_requests // 2)
                if shared
                else config.max_concurrent_requests
            )
        queued = own.max_queued_requests if own and own.max_queued_requests is not None else None
        if queued is None:
            queued = config.tenant_max_queued_requests
        if queued is None:
            queued = config.max_queued_requests // 2 if shared else config.max_queued_requests
        return concurrent, queued

    def _tenant_programs(self, tenant: str) -> int:
        own = self.keys.limits.get(tenant)
        return (own and own.max_programs) or self.config.tenant_max_programs

    def _engine_stats(self) -> EngineStats:
        try:
            return self.engine.stats()
        except EngineError:
            return EngineStats()

    def served_models(self) -> dict[str, str]:
        """Model name a client may use -> the engine's model id."""
        names: dict[str, str] = {}
        for info in self.engine.models():
            names[info.id] = info.id
        if self.config.served_model_name:
            first = next(iter(names.values()), "")
            names[self.config.served_model_name] = first
        return names


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def tenant_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("tenant", ""))
