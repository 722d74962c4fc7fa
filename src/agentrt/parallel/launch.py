"""Run a plan on N local processes (gloo) and compare it with one device.

The parent captures the model once and hands each process the exported
program (``torch.export.save``), so a worker needs no model code; each builds
the plan, lowers it and runs its rank, and rank 0 writes what it saw to a
file the parent reads. The parent computes the single-device reference.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentrt.parallel.comm import lower
from agentrt.parallel.errors import ParallelError
from agentrt.parallel.graph import Graph, capture, from_program
from agentrt.parallel.models import BUILTIN, Logits, NextTokenLoss
from agentrt.parallel.plans import PLANS
from agentrt.parallel.runtime import Runner, init_mesh


def load_model(spec: str, seed: int = 0) -> torch.nn.Module:
    """A built-in tiny model by name (``tiny-llama``, ``tiny-gpt``) or a transformers model folder."""
    if spec in BUILTIN:
        return BUILTIN[spec](seed)
    if not os.path.isdir(spec):
        raise ParallelError(
            f"unknown model {spec!r}: give a model folder or one of {', '.join(BUILTIN)}"
        )
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32).eval()


def example_inputs(
    vocab: int, batch: int, seq: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    return ids, labels


def vocab_of(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None:
        return int(config.vocab_size)
    return int(model.tok.num_embeddings)  # type: ignore[union-attr]


@dataclass
class Verification:
    """How a plan's run on N processes compared with one device."""

    model: str
    plan: str
    ndevices: int
    train: bool
    max_output_error: float  # logits
    loss_error: float  # the rest are 0.0 for a forward check
    max_grad_error: float
    second_loss_error: float  # after one SGD step on each side
    seconds_parallel: float  # fastest of three forwards, rank 0
    seconds_single: float
    atol: float

    @property
    def ok(self) -> bool:
        return (
            max(self.max_output_error, self.loss_error, self.max_grad_error, self.second_loss_error)
            <= self.atol
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LR = 0.1


def _timed(forward: Callable[[], torch.Tensor], repeats: int = 3) -> tuple[torch.Tensor, float]:
    """The output and the fastest of ``repeats`` no-grad forwards (the first pays one-time costs)."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            out = forward()
            best = min(best, time.perf_counter() - start)
    return out, best


def _save(graph: Graph) -> bytes:
    buf = io.BytesIO()
    torch.export.save(graph.program, buf)
    return buf.getvalue()


def _load(blob: bytes) -> Graph:
    return from_program(torch.export.load(io.BytesIO(blob)))


def _worker(
    rank: int,
    n: int,
    port: int,
    plan: str,
    programs: list[bytes],
    inputs: tuple[torch.Tensor, ...],
    out: str,
) -> None:
    """One rank: load the captured programs (no model code needed), plan, lower and run them."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=n,
        timeout=timedelta(seconds=120),
    )
    try:
        mesh = init_mesh(n)
        runner = Runner(lower(PLANS[plan](_load(programs[0]), n)), mesh)
        dist.barrier()
        logits, seconds = _timed(lambda: runner.forward(list(inputs[:1]))[0])
        result: dict[str, Any] = {"logits": logits, "seconds": seconds}
        if len(programs) > 1:
            runner = Runner(lower(PLANS[plan](_load(programs[1]), n)), mesh, train=True)
            loss = runner.forward(list(inputs))[0]
            loss.backward()
            result["loss"], result["grads"] = loss.detach(), runner.full_grads()
            with torch.no_grad():
                for piece in runner.parameters.values():
                    piece -= _LR * piece.grad
                result["second_loss"] = runner.forward(list(inputs))[0]
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _reference(spec: str, train: bool, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs, so the forward times compare
    try:
        return _reference_run(spec, train, inputs)
    finally:
        torch.set_num_threads(threads)


def _reference_run(spec: str, train: bool, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    model = load_model(spec)
    logits, seconds = _timed(lambda: Logits(model)(inputs[0]))
    result: dict[str, Any] = {"logits": logits, "seconds": seconds}
    if train:
        step = NextTokenLoss(model)
        loss = step(*inputs)
        loss.backward()
        result["loss"] = loss.detach()
        result["grads"] = {
            name: p.grad.detach().clone()
            for name, p in step.named_parameters()
            if p.grad is not None
        }
        with torch.no_grad():
            for p in step.parameters():
                if p.grad is not None:
                    p -= _LR * p.grad
            result["second_loss"] = step(*inputs)
    return result


def verify(
    spec: str,
    plan: str,
    ndevices: int,
    *,
    train: bool = False,
    batch: int = 4,
    seq: int = 8,
    seed: int = 0,
    atol: float = 1e-4,
) -> Verification:
    """Run ``plan`` on ``ndevices`` gloo processes and compare outputs (and gradients) with one device."""
    if plan not in PLANS:
        raise ParallelError(f"unknown plan {plan!r}; shipped plans: {', '.join(PLANS)}")
    model = load_model(spec, seed)
    inputs = example_inputs(vocab_of(model), batch, seq, seed)
    graphs = [capture(Logits(model), inputs[:1])] + (
        [capture(NextTokenLoss(model), inputs)] if train else []
    )
    for graph in graphs:
        lower(PLANS[plan](graph, ndevices))  # a plan error is raised here, not in N processes
    programs = [_save(graph) for graph in graphs]
    ref = _reference(spec, train, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        try:
            mp.start_processes(
                _worker,
                args=(ndevices, free_port(), plan, programs, inputs, out),
                nprocs=ndevices,
                join=True,
                start_method="spawn",
            )
        except mp.ProcessExitedException as exc:
            raise ParallelError(f"plan {plan!r}: a process of {ndevices} exited: {exc}") from None
        except mp.ProcessRaisedException as exc:
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise ParallelError(
                f"plan {plan!r} failed on {ndevices} processes: {lines[-1] if lines else exc}"
            ) from None
        got = torch.load(out)

    def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0

    out_err = max_err(got["logits"], ref["logits"])
    loss_err = grad_err = second_err = 0.0
    if train:
        loss_err = max_err(got["loss"], ref["loss"])
        missing = set(ref["grads"]) ^ set(got["grads"])
        if missing:
            raise ParallelError(f"parameters without a gradient on one side: {sorted(missing)[:3]}")
        grad_err = max(max_err(got["grads"][k], ref["grads"][k]) for k in ref["grads"])
        second_err = max_err(got["second_loss"], ref["second_loss"])
    return Verification(
        spec,
        plan,
        ndevices,
        train,
        out_err,
        loss_err,
        grad_err,
        second_err,
        float(got["seconds"]),
        float(ref["seconds"]),
        atol,
    )
