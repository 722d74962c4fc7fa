"""The vocabulary-split cross-entropy against torch's on whole logits, on local gloo processes."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from agentrt.parallelism.spawn import run_ranks
from agentrt.parallelism.vocab_loss import IGNORE_INDEX, vocab_parallel_loss


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    # large logits: a softmax without the global maximum would overflow
    logits = torch.randn(2, 5, 12, dtype=torch.float64) * 40
    labels = torch.randint(0, 12, (2, 5))
    labels[0, 1] = IGNORE_INDEX
    labels[1, 4] = 11  # the last id, on the last slice
    return logits, labels


def _rank(rank: int, n: int, out: str) -> None:
    logits, labels = _case()
    mine = logits.chunk(n, dim=-1)[rank].clone().requires_grad_(True)
    loss = vocab_parallel_loss(mine, labels, rank=rank)
    (loss * 3.0).backward()
    torch.save({"loss": loss.detach(), "grad": mine.grad}, f"{out}.{rank}")


def test_the_split_loss_and_its_gradient_are_torchs(tmp_path: Path) -> None:
    logits, labels = _case()
    whole = logits.clone().requires_grad_(True)
    expected = (
        F.cross_entropy(whole.flatten(0, 1), labels.flatten(), reduction="sum") / labels.numel()
    )
    (expected * 3.0).backward()
    n = 3
    run_ranks(_rank, n, (str(tmp_path / "r"),), what="vocabulary-split loss")
    got = [torch.load(tmp_path / f"r.{r}") for r in range(n)]
    for part in got:  # every device holds the whole loss
        torch.testing.assert_close(part["loss"], expected.detach(), rtol=0, atol=1e-12)
    grad = torch.cat([part["grad"] for part in got], dim=-1)
    assert whole.grad is not None
    torch.testing.assert_close(grad, whole.grad, rtol=0, atol=1e-12)
    assert float(grad[0, 1].abs().max()) == 0.0  # an ignored row adds no gradient
