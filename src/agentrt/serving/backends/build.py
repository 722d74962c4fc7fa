"""``build_engine_client``: from the server's configuration to the router ``agentrt serve`` talks to.

- no ``--backend`` / ``--ray-address``, one replica: the embedded engine in
  this process (:class:`LocalBackend`);
- ``--replicas N`` (N > 1): N embedded engines in worker processes;
- ``--backend URL`` (repeatable, or ``[[remote]]`` tables in the config
  file): remote OpenAI-compatible servers;
- ``--ray-address ADDR``: ``--replicas`` engines as Ray actors (``local``
  starts a Ray instance in this machine).

Every case is the same :class:`~agentrt.serving.router.Router`, so scheduling,
balancing and failover do not depend on where the engines run. The result is
an async context manager: the app's lifespan enters it (starting the
engines) and leaves it at shutdown.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agentrt.config import ConfigError, load_config
from agentrt.scheduling import BalancerConfig, SchedulerConfig
from agentrt.serving.backends.hosting import EMBEDDED_ENGINE, EngineSpec
from agentrt.serving.backends.local import LocalBackend
from agentrt.serving.backends.process import ProcessBackend
from agentrt.serving.backends.remote import RemoteBackend, RemoteBackendConfig, parse_backend
from agentrt.serving.config import ServerConfig

if TYPE_CHECKING:
    from agentrt.serving.backends import Backend
    from agentrt.serving.router import Router

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_memory(text: str) -> float:
    """``"2GiB"``, ``"512MB"``, ``"1073741824"`` -> bytes; ``"0.5"`` -> the fraction 0.5 (EngineConfig's convention)."""
    match = _MEMORY.match(text)
    if match is None:
        raise ConfigError(
            f"kv_cache_memory {text!r} is neither a size (e.g. 2GiB, 512MB) nor a fraction"
        )
    value, unit = float(match.group(1)), (match.group(2) or "").lower().removesuffix("b")
    result = value * _UNITS[unit]
    if result <= 0:
        raise ConfigError(f"kv_cache_memory {text!r} must be positive")
    return result


def engine_spec(
    config: ServerConfig, scheduler: SchedulerConfig, doc: dict[str, Any]
) -> EngineSpec:
    """The engine each replica runs: the ``[engine]`` table plus the server's flags.

    ``[engine] factory = "pkg.module:callable"`` (with ``[engine.options]``)
    runs another :class:`EngineClient` instead of the embedded engine, e.g.
    ``agentrt.serving.echo:EchoEngine`` for a model-free server.
    """
    table = dict(doc.get("engine", {}))
    factory = table.pop("factory", None)
    if factory is not None:
        return EngineSpec(factory=str(factory), options=dict(table.pop("options", {})))
    from agentrt.engine.config import EngineConfig  # no torch: the config module is light

    overrides: dict[str, Any] = {"scheduler": scheduler}
    if config.model:
        overrides["model"] = config.model
    if config.max_num_seqs is not None:
        overrides["max_num_seqs"] = config.max_num_seqs
    if config.kv_cache_memory is not None:
        overrides["kv_cache_memory"] = parse_memory(config.kv_cache_memory)
    try:
        engine_config = msgspec.convert({**table, **overrides}, EngineConfig, from_attributes=True)
    except (msgspec.ValidationError, ValueError) as e:
        raise ConfigError(f"invalid [engine] configuration: {e}") from e
    return EngineSpec(factory=EMBEDDED_ENGINE, options=msgspec.to_builtins(engine_config))


def build_engine_client(
    config: ServerConfig, *, config_file: str | Path | None = None, engine: EngineSpec | None = None
) -> Router:
    """The router over the engines ``config`` asks for (not started: ``async with`` it).

    ``config_file`` may hold ``[router]``, ``[scheduler]``, ``[balancer]``,
    ``[engine]``, ``[ray]`` tables and ``[[remote]]`` entries (url, kind,
    priority_order, api_key, model, ...). ``engine`` overrides the engine
    replicas run (tests, benchmarks).
    """
    from agentrt.serving.router import Router, RouterConfig

    doc: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as f:
            doc = tomllib.load(f)
    router = load_config(RouterConfig, config_file, "router")
    scheduler = load_config(
        SchedulerConfig, config_file, "scheduler", {"policy": config.scheduling_policy}
    )
    balancer = load_config(BalancerConfig, config_file, "balancer")
    if config.replicas < 1:
        raise ConfigError("replicas must be >= 1")
    remotes = [parse_backend(url) for url in config.backends]
    try:
        remotes += [msgspec.convert(entry, RemoteBackendConfig) for entry in doc.get("remote", [])]
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid [[remote]] entry: {e}") from e
    if remotes and (config.ray_address or config.replicas > 1):
        raise ConfigError("remote backends cannot be combined with --replicas or --ray-address")
    backends: list[Backend]
    if remotes:
        backends = [RemoteBackend(f"remote-{i}", remote) for i, remote in enumerate(remotes)]
    else:
        spec = engine or engine_spec(config, scheduler, doc)
        if config.ray_address:
            backends = _ray_backends(config, spec, config_file)
        elif config.replicas > 1:
            backends = [ProcessBackend(f"replica-{i}", spec) for i in range(config.replicas)]
        else:
            backends = [LocalBackend("local-0", spec)]
    return Router(backends, config=router, scheduler=scheduler, balancer=balancer)


def _ray_backends(
    config: ServerConfig, spec: EngineSpec, config_file: str | Path | None
) -> list[Backend]:
    try:
        from agentrt.serving.backends.ray import RayBackend, RayPlacement
    except ImportError as e:
        raise ConfigError(
            f"--ray-address needs the ray extra (pip install 'agentrt[ray]'): {e}"
        ) from e
    address = None if config.ray_address == "local" else config.ray_address
    placement = load_config(RayPlacement, config_file, "ray", {"address": address})
    if address is None:
        placement = msgspec.structs.replace(placement, address=None)
    return [RayBackend(f"ray-{i}", spec, placement) for i in range(config.replicas)]
