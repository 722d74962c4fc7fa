"""The engines a :class:`~agentrt.serving.router.Router` can route to.

Every backend is an :class:`~agentrt.protocol.engine.EngineClient` with an
id, a ``run`` coroutine that brings the engine up and keeps it up, and a
health check:

- :class:`LocalBackend`: an engine object in this process;
- :class:`ProcessBackend`: an embedded engine in a worker process (``--replicas N``);
- :class:`RemoteBackend`: a vLLM / SGLang / agentrt / OpenAI-compatible server (``--backend URL``);
- ``RayBackend`` (:mod:`agentrt.serving.router.backends.ray`, needs the ``ray`` extra):
  an engine in a Ray actor (``--ray-address``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from anyio.abc import TaskStatus

from agentrt.protocol.engine import EngineClient
from agentrt.serving.router.backends.hosting import EngineSpec
from agentrt.serving.router.backends.local import LocalBackend
from agentrt.serving.router.backends.process import ProcessBackend
from agentrt.serving.router.backends.remote import RemoteBackend, RemoteBackendConfig, parse_backend


@runtime_checkable
class Backend(EngineClient, Protocol):
    """An engine as the router manages it."""

    engine_id: str
    # True when the engine schedules by program itself (given the call's ProgramTag);
    # False when the router must send the program's priority in the request instead.
    program_aware: bool

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Bring the engine up, call ``task_status.started()`` once it serves, then keep
        serving until cancelled (shut down cleanly) or until the engine is lost (return
        or raise). Raising before ``started`` means it could not be brought up."""
        ...

    async def check_health(self) -> None:
        """Return if the engine answers, raise :class:`EngineUnavailable` if not (the router adds the timeout)."""
        ...


__all__ = [
    "Backend",
    "EngineSpec",
    "LocalBackend",
    "ProcessBackend",
    "RemoteBackend",
    "RemoteBackendConfig",
    "parse_backend",
]
