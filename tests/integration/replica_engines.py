"""Engine factories that replica workers (processes, Ray actors) import by name in the tests."""

from __future__ import annotations

from agentrt.protocol.engine import EngineClient


async def tiny_llama_engine(
    num_kv_blocks: int = 64, max_num_seqs: int = 8, kv_retention: str = "off"
) -> EngineClient:
    """The embedded engine over the tests' tiny random Llama (no tokenizer: token-id prompts)."""
    from tests.conftest import make_tiny_loaded

    from agentrt.engine import AsyncEngine, EngineConfig, LLMEngine
    from agentrt.scheduling import RetentionConfig

    config = EngineConfig(
        dtype="float32",
        num_kv_blocks=num_kv_blocks,
        max_num_seqs=max_num_seqs,
        retention=RetentionConfig(mode=kv_retention),  # type: ignore[arg-type]
    )
    return AsyncEngine(LLMEngine(config, make_tiny_loaded()))


def broken_engine(reason: str) -> EngineClient:
    """A factory that fails the way a missing model or GPU does."""
    raise RuntimeError(reason)


POISON_TOKEN = 255


async def faulty_tiny_llama_engine() -> EngineClient:
    """The tiny-Llama engine whose model step fails for good once a batch holds ``POISON_TOKEN``.

    A stand-in for a fault of the model itself (a lost device, a kernel that
    raises): no call in the batch can go on, so the engine stops.
    """
    from typing import Any

    from agentrt.engine import AsyncEngine

    engine = await tiny_llama_engine()
    assert isinstance(engine, AsyncEngine)
    runner = engine.engine.runner
    execute = runner.execute

    def faulty(batch: Any) -> Any:
        if any(POISON_TOKEN in item.seq.token_ids for item in batch):
            raise RuntimeError("model fault")
        return execute(batch)

    runner.execute = faulty  # type: ignore[method-assign]
    return engine
