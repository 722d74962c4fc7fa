"""The planner's package never shadows the SDK's ``agentrt.parallel()``."""

from __future__ import annotations

import agentrt
import agentrt.parallelism


def test_the_sdk_parallel_block_survives_importing_the_planner() -> None:
    assert callable(agentrt.parallel)
    assert agentrt.parallelism.__name__ == "agentrt.parallelism"
