"""The shipped plans on local gloo processes give the single-device logits, loss and gradients (fp32, atol 1e-4)."""

from __future__ import annotations

import pytest

from agentrt.parallel import PlanError
from agentrt.parallel.launch import verify


@pytest.mark.parametrize("plan", ["dp", "tp"])
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt"])
def test_plan_on_two_processes_matches_one_device(model: str, plan: str) -> None:
    result = verify(model, plan, 2, train=True)
    assert result.ok, result.as_dict()
    assert result.max_output_error <= 1e-4 and result.loss_error <= 1e-4
    assert result.max_grad_error <= 1e-4 and result.second_loss_error <= 1e-4


def test_a_plan_error_is_raised_before_any_process_starts() -> None:
    with pytest.raises(PlanError, match="batch size 4, which 3 devices do not divide"):
        verify("tiny-gpt", "dp", 3)


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["dp", "tp"])
def test_plan_on_four_processes_matches_one_device(plan: str) -> None:
    # tensor parallel over 4 splits the 4 query heads but must gather the 2 key/value heads
    result = verify("tiny-llama", plan, 4, train=True)
    assert result.ok, result.as_dict()
