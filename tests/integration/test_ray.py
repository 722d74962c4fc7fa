"""Engine replicas as Ray actors on a local Ray instance that the test starts (``--ray-address``).

The router is the same one that fronts worker processes; an actor killed
with ``ray.kill`` mid-stream must fail its calls promptly, move its
programs, and be replaced.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from tests.polling import eventually

from agentrt.protocol.engine import (
    EngineUnavailable,
    GenerationRequest,
    ProgramTag,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
)
from agentrt.serving.router import Router, RouterConfig
from agentrt.serving.router.backends import EngineSpec

ray = pytest.importorskip("ray")
from agentrt.serving.router.backends.ray import RayBackend, RayPlacement  # noqa: E402

pytestmark = pytest.mark.ray

ECHO = "agentrt.testing.echo:EchoEngine"
LONG = "word " * 3000  # past the locality threshold: the program is pinned to one actor
FAST = RouterConfig(health_interval_s=0.2, health_timeout_s=5.0, restart_backoff_s=0.2)
PLACEMENT = RayPlacement(num_cpus=0.5)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="agentrt-test")
    yield
    ray.shutdown()


def chat(
    call_id: str, text: str = "one two three", program: str | None = None, **sampling: object
) -> GenerationRequest:
    return GenerationRequest(
        call_id=call_id,
        messages=[{"role": "user", "content": text}],
        program=ProgramTag(program_id=program) if program else None,
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def collect(router: Router, request: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in router.generate(request)]


def actors(n: int, **options: object) -> list[RayBackend]:
    spec = EngineSpec(factory=ECHO, options=dict(options))
    return [RayBackend(f"ray-{i}", spec, PLACEMENT) for i in range(n)]


async def test_calls_stream_from_actors_with_their_errors_typed() -> None:
    async with Router(actors(1, max_model_len=64), config=FAST) as router:
        events = await collect(router, chat("c1", "alpha beta gamma", program="p"))
        assert "".join(e.text for e in events) == "alpha beta gamma"
        assert events[-1].usage is not None and events[-1].usage.completion_tokens == 3
        assert [m.id for m in router.models()] == ["echo"]
        with pytest.raises(PromptTooLong):
            await collect(router, chat("c2", "w " * 100))


async def test_leaving_a_stream_early_aborts_the_call_on_the_actor() -> None:
    (backend,) = actors(1, token_delay=0.02)
    async with Router([backend], config=FAST) as router:
        stream = router.generate(chat("c1", "w " * 200))
        await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]

        async def refreshed_running() -> int:
            await backend.check_health()
            return backend.stats().running

        with anyio.fail_after(10):
            while await refreshed_running():
                pass
        assert backend.stats().kv_blocks_used == 0


async def test_a_killed_actor_fails_its_calls_promptly_and_is_replaced() -> None:
    backends = actors(2, token_delay=0.05)
    async with Router(backends, config=FAST) as router:
        await collect(router, chat("warm", LONG, program="p", max_tokens=1))
        entry = router.table.get("p")
        assert entry is not None and entry.engine_id is not None
        doomed = entry.engine_id
        doomed_backend = next(b for b in backends if b.engine_id == doomed)
        old_actor = doomed_backend._actor

        stream = router.generate(chat("inflight", LONG, program="p"))
        await stream.__anext__()
        ray.kill(old_actor, no_restart=True)
        with anyio.fail_after(10), pytest.raises(EngineUnavailable):
            async for _ in stream:
                pass

        events = await collect(router, chat("after", LONG, program="p", max_tokens=1))
        assert events[-1].finish_reason == "length"
        assert entry.engine_id not in (None, doomed)  # re-pinned to the live actor

        await eventually(
            lambda: next(s for s in router.engines() if s.engine_id == doomed).up, within=30
        )
        assert doomed_backend._actor is not None and doomed_backend._actor != old_actor


def test_the_multi_node_example_is_valid_for_ray_and_for_our_configs() -> None:
    import json
    from pathlib import Path

    import jsonschema
    import yaml

    from agentrt.config import load_config
    from agentrt.scheduling import BalancerConfig
    from agentrt.serving.config import ServerConfig

    server = Path(__file__).parents[2] / "server"
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((server / "ray-cluster.yaml").read_text()), schema)
    toml = server / "ray.toml"
    assert load_config(RayPlacement, toml, "ray").num_cpus > 0
    assert load_config(RouterConfig, toml, "router").restart
    assert load_config(BalancerConfig, toml, "balancer").policy == "locality"
    assert load_config(ServerConfig, toml, "server").port == 8000
