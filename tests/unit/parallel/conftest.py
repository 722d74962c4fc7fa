"""Captured tiny models shared by the parallel tests (capturing costs about a second each)."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="session")
def llama_loss_graph() -> Any:
    from agentrt.parallel import capture
    from agentrt.parallel.launch import example_inputs
    from agentrt.parallel.models import NextTokenLoss, tiny_llama

    return capture(NextTokenLoss(tiny_llama()), example_inputs(256, 4, 8, 0))


@pytest.fixture(scope="session")
def gpt_logits_graph() -> Any:
    from agentrt.parallel import capture
    from agentrt.parallel.models import Logits, tiny_gpt

    return capture(Logits(tiny_gpt()), (torch.randint(0, 256, (4, 8)),))
