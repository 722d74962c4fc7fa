"""An eager step keeps SDPA off cuDNN's kernel on CUDA (a plan per new length); elsewhere it
leaves torch's choice alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from tests.unit.engine.helpers import random_prompts, tiny_engine

from agentrt.engine import model_runner
from agentrt.engine.attention import sdpa_backends
from agentrt.protocol.engine import SamplingParams


def test_on_cuda_the_step_may_use_every_sdpa_kernel_but_cudnns() -> None:
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with sdpa_backends(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_off_cuda_the_kernels_are_torchs_choice() -> None:
    with sdpa_backends(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_every_eager_step_runs_inside_the_devices_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    devices: list[torch.device] = []

    @contextlib.contextmanager
    def recording(device: torch.device) -> Iterator[None]:
        devices.append(device)
        with sdpa_backends(device):
            yield

    monkeypatch.setattr(model_runner, "sdpa_backends", recording)
    engine = tiny_engine()
    steps = 0
    engine.add_request("r", random_prompts([9])[0], SamplingParams(max_tokens=5, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    assert devices == [engine.runner.device] * steps
