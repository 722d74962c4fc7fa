"""Captured tiny models shared by the parallel tests (capturing costs about a second each)."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="session")
def llama_loss_graph() -> Any:
    from agentrt.parallelism import capture
    from agentrt.parallelism.launch import example_inputs
    from agentrt.parallelism.models import NextTokenLoss, tiny_llama

    return capture(NextTokenLoss(tiny_llama()), example_inputs(256, 4, 8, 0))


@pytest.fixture(scope="session")
def gpt_logits_graph() -> Any:
    from agentrt.parallelism import capture
    from agentrt.parallelism.models import Logits, tiny_gpt

    return capture(Logits(tiny_gpt()), (torch.randint(0, 256, (4, 8)),))


@pytest.fixture(scope="session")
def smollm2_folder() -> Any:
    """SmolLM2-135M as a transformers folder (the engine's cached GGUF conversion); skips without it."""
    from agentrt.engine.loader import ModelLoadError, default_gguf_path, gguf_to_hf_folder

    try:
        return gguf_to_hf_folder(default_gguf_path())
    except ModelLoadError as e:
        pytest.skip(str(e))
