"""Run a plan on N local processes (gloo) and compare it with one device.

The parent captures the model once (the loss and the logits of a training
step, or the logits alone) and hands each process the exported program
through a file (``torch.export.save``), so a worker needs no model code; each builds the
plan, lowers it and runs its rank, and rank 0 writes what it saw to a file
the parent reads. The parent computes the single-device reference.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from agentrt.parallelism.comm import lower
from agentrt.parallelism.errors import ParallelError
from agentrt.parallelism.graph import Graph, capture, from_program
from agentrt.parallelism.models import BUILTIN, Logits, LossAndLogits
from agentrt.parallelism.plans import PLANS
from agentrt.parallelism.runtime import Runner, init_mesh
from agentrt.parallelism.spawn import run_ranks


def load_model(spec: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A built-in tiny model by name (``tiny-llama``, ``tiny-gpt``) or a transformers model folder."""
    if spec in BUILTIN:
        return BUILTIN[spec](seed).to(dtype)
    if not os.path.isdir(spec):
        raise ParallelError(
            f"unknown model {spec!r}: give a model folder or one of {', '.join(BUILTIN)}"
        )
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).eval()
    except (OSError, ValueError, KeyError) as exc:  # no config, unknown architecture, bad weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParallelError(f"cannot load a causal LM from {spec}: {first}") from None


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
    dtype: str
    max_output_error: float  # logits, absolute
    max_output_rel_error: float  # the same over the largest logit
    loss_error: float  # the rest are 0.0 for a forward check
    max_grad_error: float
    second_loss_error: float  # after one SGD step on each side
    seconds_parallel: float  # fastest of three forwards, rank 0
    seconds_single: float
    atol: float

    @property
    def ok(self) -> bool:
        worst = (
            self.max_output_error,
            self.loss_error,
            self.max_grad_error,
            self.second_loss_error,
        )
        return max(worst) <= self.atol

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


_LR = 0.1


def _timed(forward: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    """The output and the fastest of ``repeats`` no-grad forwards (the first pays one-time costs)."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            out = forward()
            best = min(best, time.perf_counter() - start)
    return out, best


def _load(path: str) -> Graph:
    return from_program(torch.export.load(path))


def _worker(
    rank: int,
    n: int,
    plan: str,
    program: str,
    train: bool,
    inputs: list[torch.Tensor],
    out: str,
) -> None:
    """One rank: load the captured program (no model code needed), plan, lower and run it."""
    graph = _load(program)
    runner = Runner(lower(PLANS[plan](graph, n)), init_mesh(n), train=train, copy=False)
    dist.barrier()
    outputs, seconds = _timed(lambda: runner.forward(inputs))
    result: dict[str, Any] = {"logits": outputs[-1], "seconds": seconds}
    if train:
        loss = runner.forward(inputs)[0]
        loss.backward()
        result["loss"], result["grads"] = loss.detach(), runner.full_grads(keep=rank == 0)
        with torch.no_grad():
            for piece in runner.parameters.values():
                piece -= _LR * piece.grad
            result["second_loss"] = runner.forward(inputs)[0]
    if rank == 0:
        torch.save(result, out)


def _reference(model: torch.nn.Module, train: bool, inputs: list[torch.Tensor]) -> dict[str, Any]:
    """One device, one thread (as each rank runs), so the forward times compare."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step = LossAndLogits(model) if train else Logits(model)
        outputs, seconds = _timed(lambda: step(*inputs))
        result: dict[str, Any] = {"logits": outputs[-1] if train else outputs, "seconds": seconds}
        if train:
            loss = step(*inputs)[0]
            loss.backward()
            result["loss"] = loss.detach()
            # Every name of a tied weight (export keeps one of them), with the weight's identity.
            named = list(step.named_parameters(remove_duplicate=False))
            result["grads"] = {k: p.grad for k, p in named if p.grad is not None}
            result["weight_of"] = {k: id(p) for k, p in named}
            with torch.no_grad():
                for p in step.parameters():
                    if p.grad is not None:
                        p -= _LR * p.grad
                result["second_loss"] = step(*inputs)[0]
        return result
    finally:
        torch.set_num_threads(threads)


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
    dtype: torch.dtype = torch.float32,
) -> Verification:
    """Run ``plan`` on ``ndevices`` gloo processes and compare outputs (and gradients) with one device."""
    if plan not in PLANS:
        raise ParallelError(f"unknown plan {plan!r}; shipped plans: {', '.join(PLANS)}")
    model = load_model(spec, seed, dtype)
    inputs = list(example_inputs(vocab_of(model), batch, seq, seed))[: 2 if train else 1]
    graph = capture(LossAndLogits(model) if train else Logits(model), tuple(inputs))
    lower(PLANS[plan](graph, ndevices))  # a plan error is raised here, not in N processes
    with tempfile.TemporaryDirectory() as tmp:
        program, out = os.path.join(tmp, "program.pt2"), os.path.join(tmp, "rank0.pt")
        torch.export.save(graph.program, program)  # before the reference's SGD step changes weights
        ref = _reference(model, train, inputs)
        del model, graph  # the workers load their own copy; the parent keeps only the reference
        run_ranks(
            _worker,
            ndevices,
            (plan, program, train, inputs, out),
            what=f"plan {plan!r}",
        )
        got = torch.load(out)
    return _compare(spec, plan, ndevices, train, dtype, got, ref, atol)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _compare(
    spec: str,
    plan: str,
    n: int,
    train: bool,
    dtype: torch.dtype,
    got: dict[str, Any],
    ref: dict[str, Any],
    atol: float,
) -> Verification:
    out_err = _max_err(got["logits"], ref["logits"])
    rel_err = out_err / max(float(ref["logits"].abs().max()), 1e-30)
    loss_err = grad_err = second_err = 0.0
    if train:
        loss_err = _max_err(got["loss"], ref["loss"])
        unknown = set(got["grads"]) - set(ref["grads"])
        covered = {ref["weight_of"][k] for k in got["grads"] if k in ref["weight_of"]}
        uncovered = {k for k in ref["grads"] if ref["weight_of"][k] not in covered}
        if unknown or uncovered:
            raise ParallelError(
                f"parameters without a gradient on one side: {sorted(unknown | uncovered)[:3]}"
            )
        grad_err = max(_max_err(got["grads"][k], ref["grads"][k]) for k in got["grads"])
        second_err = _max_err(got["second_loss"], ref["second_loss"])
    return Verification(
        spec,
        plan,
        n,
        train,
        str(dtype).removeprefix("torch."),
        out_err,
        rel_err,
        loss_err,
        grad_err,
        second_err,
        float(got["seconds"]),
        float(ref["seconds"]),
        atol,
    )
