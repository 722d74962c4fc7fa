"""Engine factories that replica workers (processes, Ray actors) import by name in the tests."""

from __future__ import annotations

from agentrt.protocol.engine import EngineClient


async def tiny_llama_engine(num_kv_blocks: int = 64, max_num_seqs: int = 8) -> EngineClient:
    """The embedded engine over the tests' tiny random Llama (no tokenizer: token-id prompts)."""
    from tests.conftest import make_tiny_loaded

    from agentrt.engine import AsyncEngine, EngineConfig, LLMEngine

    config = EngineConfig(dtype="float32", num_kv_blocks=num_kv_blocks, max_num_seqs=max_num_seqs)
    return AsyncEngine(LLMEngine(config, make_tiny_loaded()))


def broken_engine(reason: str) -> EngineClient:
    """A factory that fails the way a missing model or GPU does."""
    raise RuntimeError(reason)
