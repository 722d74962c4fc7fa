"""Build the one :class:`EngineClient` the app talks to, from :class:`ServerConfig` (and a TOML file).

- nothing else asked: the embedded engine in this process (the default model
  unless ``model`` names another);
- ``engine_factory``: any engine a ``"package.module:callable"`` builds (e.g.
  ``agentrt.testing.echo:EchoEngine`` for a model-free server);
- ``replicas > 1``, ``backends`` or ``ray_address``: the program-aware
  :class:`~agentrt.serving.router.Router` over worker-process replicas,
  remote OpenAI-compatible servers and Ray actors.

The TOML file's ``[engine]``, ``[scheduler]``, ``[router]``, ``[balancer]``
and ``[ray]`` tables configure those components, and ``[[remote]]`` tables
describe remote engines in full; the server flags override the few values
they share (model, policy, max_num_seqs, KV memory).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agentrt.config import ConfigError, load_config
from agentrt.protocol.engine import EngineClient
from agentrt.scheduling import SchedulerConfig
from agentrt.serving.config import ServerConfig

if TYPE_CHECKING:
    from agentrt.engine import EngineConfig

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_memory(value: str | float) -> float:
    """``"2GiB"``, ``"512MB"``, ``"1000000"`` -> bytes; ``"0.3"`` -> a fraction (the engine reads values <= 1 so)."""
    if isinstance(value, int | float):
        return float(value)
    match = _SIZE.match(value)
    if match is None:
        raise ConfigError(
            f"kv_cache_memory {value!r} is not a size (e.g. 2GiB, 512MB) or a fraction (e.g. 0.3)"
        )
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    if unit in ("", "b"):
        return number
    power = "kmgt".index(unit[0]) + 1
    return float(number * (1024 if "i" in unit else 1000) ** power)


def scheduler_config(server: ServerConfig, toml_path: str | Path | None) -> SchedulerConfig:
    return load_config(
        SchedulerConfig, toml_path, "scheduler", {"policy": server.scheduling_policy}
    )


def engine_config(server: ServerConfig, toml_path: str | Path | None = None) -> EngineConfig:
    """The embedded engine's config: ``[engine]`` of the file, then the server's flags."""
    from agentrt.engine import EngineConfig

    overrides: dict[str, Any] = {
        "model": server.model,
        "max_num_seqs": server.max_num_seqs,
        "dtype": server.dtype,
        "quantization": server.quantization,
        "compile": server.compile,
        "cuda_graphs": server.cuda_graphs,
        "num_threads": server.num_threads,
        "decode_threads": server.decode_threads,
        "tensor_parallel_size": server.tensor_parallel_size,
        "pipeline_parallel_size": server.pipeline_parallel_size,
    }
    if server.kv_cache_memory is not None:
        overrides["kv_cache_memory"] = parse_memory(server.kv_cache_memory)
    config = load_config(EngineConfig, toml_path, "engine", overrides)
    if server.kv_retention is not None:
        retention = msgspec.structs.replace(config.retention, mode=server.kv_retention)
        config = msgspec.structs.replace(config, retention=retention)
    return msgspec.structs.replace(config, scheduler=scheduler_config(server, toml_path))


@asynccontextmanager
async def embedded(config: EngineConfig) -> AsyncIterator[EngineClient]:
    """The embedded engine with ``config``, loaded off the event loop and closed when the block exits."""
    from agentrt.engine import AsyncEngine

    async with await AsyncEngine.start(config) as engine:
        yield engine


async def embedded_engine(**config: Any) -> EngineClient:
    """Engine factory for worker processes and Ray actors: an ``AsyncEngine`` from ``EngineConfig`` fields."""
    from agentrt.engine import AsyncEngine, EngineConfig

    engine: EngineClient = await AsyncEngine.start(msgspec.convert(config, EngineConfig))
    return engine


@asynccontextmanager
async def open_engine(
    server: ServerConfig, toml_path: str | Path | None = None
) -> AsyncIterator[EngineClient]:
    """Start the engine (or router) the config describes; close it when the block exits."""
    from agentrt.serving.router.backends.hosting import EngineSpec, hosted_engine

    if server.replicas < 1:
        raise ConfigError("replicas must be >= 1")
    remotes = remote_tables(toml_path)
    if server.engine_factory is not None and not _routed(server, remotes):
        async with hosted_engine(
            EngineSpec(factory=server.engine_factory, options=server.engine_options)
        ) as engine:
            yield engine
        return
    if not _routed(server, remotes):
        async with embedded(engine_config(server, toml_path)) as engine:
            yield engine
        return
    async with _router(server, toml_path, remotes) as router:
        yield router


def remote_tables(toml_path: str | Path | None) -> list[Any]:
    """The ``[[remote]]`` tables of the file: remote engines described in full (kind, priority order, key)."""
    if toml_path is None:
        return []
    import tomllib

    from agentrt.serving.router.backends import RemoteBackendConfig

    with open(toml_path, "rb") as f:
        tables = tomllib.load(f).get("remote", [])
    if not isinstance(tables, list):
        raise ConfigError("[[remote]] must be an array of tables")
    try:
        return [msgspec.convert(t, RemoteBackendConfig) for t in tables]
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid [[remote]] table: {e}") from e


def _routed(server: ServerConfig, remotes: list[Any]) -> bool:
    return (
        server.replicas > 1
        or bool(server.backends)
        or bool(remotes)
        or server.ray_address is not None
    )


def _router(server: ServerConfig, toml_path: str | Path | None, remotes: list[Any]) -> Any:
    from agentrt.scheduling import BalancerConfig
    from agentrt.serving.router import Router, RouterConfig
    from agentrt.serving.router.backends import ProcessBackend, RemoteBackend, parse_backend
    from agentrt.serving.router.backends.hosting import EngineSpec

    scheduler = scheduler_config(server, toml_path)
    hosts_replicas = (
        server.ray_address is not None or server.replicas > 1 or not (server.backends or remotes)
    )
    if server.engine_factory is not None:
        spec = EngineSpec(factory=server.engine_factory, options=server.engine_options)
    else:
        engine = engine_config(server, toml_path)
        if hosts_replicas:
            # The router charges programs in the unit its replicas schedule in, so that the
            # service it hands them (ProgramTag.attained_service) means the same to both.
            scheduler = scheduler.on_device(engine.device)
            engine = msgspec.structs.replace(engine, scheduler=scheduler)
        spec = EngineSpec(
            factory="agentrt.serving.engines:embedded_engine",
            options=msgspec.to_builtins(engine),
        )
    backends: list[Any] = []
    if server.ray_address is not None:
        from agentrt.serving.router.backends.ray import RayBackend, RayPlacement

        placement = load_config(RayPlacement, toml_path, "ray", {"address": server.ray_address})
        backends += [RayBackend(f"ray-{i}", spec, placement) for i in range(server.replicas)]
    elif hosts_replicas:
        backends += [ProcessBackend(f"replica-{i}", spec) for i in range(server.replicas)]
    configs = [parse_backend(url) for url in server.backends] + remotes
    backends += [
        RemoteBackend(f"remote-{i}", c, scheduler=scheduler) for i, c in enumerate(configs)
    ]
    return Router(
        backends,
        config=load_config(RouterConfig, toml_path, "router"),
        scheduler=scheduler,
        balancer=load_config(BalancerConfig, toml_path, "balancer"),
    )
