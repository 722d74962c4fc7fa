"""Run a plan on N local processes (gloo) and compare it with one device.

The parent captures the model once (the loss and the logits of a training
step, or the logits alone) and hands each process the exported program
through a file (``torch.export.save``), so a worker needs no model code; each builds the
plan, lowers it and runs its rank, and rank 0 writes what it saw to a file
the parent reads. The parent computes the single-device reference.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from agentrt.parallelism.comm import lower
from agentrt.parallelism.errors import ParallelError
from agentrt.parallelism.graph import Graph, capture, from_program
from agentrt.parallelism.interlaced import interlaced_for
from agentrt.parallelism.models import BUILTIN, Logits, LossAndLogits, _loss
from agentrt.parallelism.pipeline import (
    PIPELINE_PLANS,
    SplitStageModule,
    StageModule,
    pipeline_plan,
)
from agentrt.parallelism.plans import PLANS
from agentrt.parallelism.runtime import Runner, init_mesh, init_mesh_2d
from agentrt.parallelism.spawn import run_ranks


def load_model(spec: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A built-in tiny model by name (``tiny-llama``, ``tiny-gpt``) or a transformers model folder."""
    if spec in BUILTIN:
        model = BUILTIN[spec](seed)
        return model if next(model.parameters()).device.type == "meta" else model.to(dtype)
    if not os.path.isdir(spec):
        raise ParallelError(
            f"unknown model {spec!r}: give a model folder or one of {', '.join(BUILTIN)}"
        )
    from transformers import AutoModelForCausalLM

    try:
        loaded: torch.nn.Module = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
        return loaded.eval()
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
    return int(cast(torch.nn.Embedding, model.tok).num_embeddings)


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
    seconds_parallel: (
        float  # median of the timed steps (forward, or forward and backward in training)
    )
    seconds_single: float
    atol: float
    as_scheduled: bool = True  # a pipeline ran its blocks in the order its schedule predicts

    @property
    def ok(self) -> bool:
        worst = (
            self.max_output_error,
            self.loss_error,
            self.max_grad_error,
            self.second_loss_error,
        )
        return max(worst) <= self.atol and self.as_scheduled

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


_LR = 0.1


def _timed(step: Callable[[], Any], repeats: int = 3) -> float:
    """The median of ``repeats`` runs of ``step`` in this process, after one that pays one-time costs
    (0 repeats: not timed, 0.0, and ``step`` not run)."""
    if repeats == 0:
        return 0.0
    step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _load(path: str) -> Graph:
    return from_program(torch.export.load(path))


def _barrier_timed(step: Callable[[], Any], repeats: int = 3) -> float:
    """The median of ``repeats`` runs of a step every rank takes, each ended by a barrier
    (after one that pays one-time costs; 0 repeats: not timed, 0.0)."""
    if repeats == 0:
        return 0.0
    step()
    dist.barrier()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        dist.barrier()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _forget_grads(weights: Any) -> None:
    """Drop the gradients the timed steps left, so the checked step starts clean."""
    for piece in weights:
        piece.grad = None


def _sgd(weights: Any) -> None:
    """One plain SGD step on the weights that got a gradient (both sides of a check take the same)."""
    with torch.no_grad():
        for piece in weights:
            if piece.grad is not None:
                piece -= _LR * piece.grad


def _worker(
    rank: int,
    n: int,
    plan: str,
    program: str,
    train: bool,
    inputs: list[torch.Tensor],
    repeats: int,
    out: str,
) -> None:
    """One rank: load the captured program (no model code needed), plan, lower and run it."""
    graph = _load(program)
    runner = Runner(lower(PLANS[plan](graph, n)), init_mesh(n), train=train, copy=False)
    dist.barrier()

    def step() -> None:  # what a step is: a forward, or in training a forward and its backward
        if train:
            runner.forward(inputs)[0].backward()  # type: ignore[no-untyped-call]
            return
        with torch.no_grad():
            runner.forward(inputs)

    seconds = _barrier_timed(step, repeats)
    _forget_grads(runner.parameters.values())
    result: dict[str, Any] = {"seconds": seconds}
    if not train:
        with torch.no_grad():
            result["logits"] = runner.forward(inputs)[-1]
    else:  # one forward gives the checked logits and the loss whose backward is checked
        loss, *_, logits = runner.forward(inputs)
        result["logits"] = logits.detach()
        loss.backward()  # type: ignore[no-untyped-call]
        result["loss"], result["grads"] = loss.detach(), runner.full_grads(keep=rank == 0)
        _sgd(runner.parameters.values())
        with torch.no_grad():
            result["second_loss"] = runner.forward(inputs)[0]
    if rank == 0:
        torch.save(result, f"{out}.0")


def _pipe_worker(
    rank: int,
    n: int,
    plan: str,
    program: str,
    train: bool,
    nmicro: int,
    inputs: list[torch.Tensor],
    repeats: int,
    out: str,
) -> None:
    """One device of a pipeline (torch-run or interlaced); every rank writes a file."""
    job = _PipeJob(rank, n, plan, _load(program), train, nmicro, inputs, repeats)
    run = _interlaced_rank if plan == "interlaced" else _torch_pipe_rank
    torch.save(run(job), f"{out}.{rank}")


@dataclass
class _PipeJob:
    """What one rank of a pipeline run is given."""

    rank: int
    n: int
    plan: str
    graph: Graph
    train: bool
    nmicro: int
    inputs: list[torch.Tensor]
    repeats: int  # timed steps, the median kept


def _torch_pipe_rank(job: _PipeJob) -> dict[str, Any]:
    """One pipeline stage: torch's PipelineStage and schedule over our stage module."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    rank, n, plan, graph = job.rank, job.n, job.plan, job.graph
    train, nmicro, inputs = job.train, job.nmicro, job.inputs
    built = pipeline_plan(plan, graph, n, nmicro=nmicro, train=train)
    pipe = built.plan.pipe
    assert pipe is not None
    stage_index, position = built.place(rank)
    spec = built.specs[stage_index]
    group = None
    module: StageModule | SplitStageModule
    if built.inner is None:
        module = StageModule(spec, graph, train=train)
    else:
        mesh = init_mesh_2d(pipe.nstages, built.width)
        group = mesh["pp"].get_group()
        program_ = lower(built.inner[stage_index])
        module = SplitStageModule(spec, program_, mesh["tp"], train=train)

    def examples(names: list[str]) -> tuple[torch.Tensor, ...]:
        # static shapes (no shape-inference run); floating tensors carry gradients in training
        metas = [graph.tensors[name] for name in names]
        return tuple(
            torch.zeros(t.shape, dtype=t.dtype).requires_grad_(train and t.dtype.is_floating_point)
            for t in metas
        )

    stage = PipelineStage(
        module,
        stage_index,
        pipe.nstages,
        torch.device("cpu"),
        input_args=examples(spec.inputs),
        output_args=examples(spec.outputs),
        group=group,
    )
    kind = Schedule1F1B if pipe.kind == "1f1b" else ScheduleGPipe
    schedule = kind(stage, nmicro, loss_fn=_loss if train else None)
    first, last = stage_index == 0, stage_index == pipe.nstages - 1

    def run(losses: list[torch.Tensor], *, forward_only: bool = False) -> Any:
        args = (inputs[0],) if first else ()
        kwargs: dict[str, Any] = {"target": inputs[1], "losses": losses} if last and train else {}
        if forward_only and train:
            return schedule.eval(*args, **kwargs)
        with torch.no_grad() if not train else torch.enable_grad():
            return schedule.step(*args, **kwargs)

    tied = module.tied_groups(built.width, position)
    dist.barrier()
    seconds = _barrier_timed(
        lambda: run([]), job.repeats
    )  # a step: forwards, and in training backwards
    _forget_grads(module.weights.values())
    module.trace = []
    losses: list[torch.Tensor] = []
    logits = run(losses)
    module.reduce_tied(tied)
    result: dict[str, Any] = {"trace": module.trace}
    module.trace = None
    if train:
        grads = module.grads()  # collective across a split stage's group
        if position == 0:
            result["grads"] = {k: g.detach().clone() for k, g in grads.items()}
        _sgd(module.weights.values())
        second: list[torch.Tensor] = []
        run(second, forward_only=True)
        if last and position == 0:
            result["loss"] = torch.stack(losses).mean().detach()
            result["second_loss"] = torch.stack(second).mean().detach()
    if last and position == 0:
        result["logits"] = logits.detach()
    result["seconds"] = seconds
    return result


def _interlaced_rank(job: _PipeJob) -> dict[str, Any]:
    """One device of an interlaced pipeline: rank 0 returns the outputs, every rank its stage's gradients."""
    from agentrt.parallelism.interlaced import InterlacedRunner

    built = interlaced_for(job.graph, job.n, nmicro=job.nmicro, train=job.train)
    runner = InterlacedRunner(built, init_mesh(job.n), train=job.train)
    ids = list(job.inputs[0].chunk(job.nmicro))
    labels = list(job.inputs[1].chunk(job.nmicro)) if job.train else None
    dist.barrier()
    with torch.enable_grad() if job.train else torch.no_grad():
        best = _barrier_timed(lambda: runner.step(ids, labels, _loss), job.repeats)
    _forget_grads(runner.parameters())
    logits, loss = runner.step(ids, labels, _loss)
    logits = runner.whole_logits(logits)
    result: dict[str, Any] = {"logits": logits, "seconds": best, "trace": []}
    if job.train:
        grads = runner.full_grads(keep=job.rank == 0)
        result["loss"] = loss
        result["grads"] = grads if job.rank == 0 else runner.stage.grads()
        _sgd(runner.parameters())
        with torch.no_grad():
            result["second_loss"] = runner.step(ids, labels, _loss)[1]
    return result


def _reference(
    model: torch.nn.Module, train: bool, inputs: list[torch.Tensor], repeats: int
) -> dict[str, Any]:
    """One device, one thread (as each rank runs), so the step times compare."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step = LossAndLogits(model) if train else Logits(model)
        if train:
            seconds = _timed(lambda: step(*inputs)[0].backward(), repeats)
            _forget_grads(step.parameters())
        else:
            with torch.no_grad():
                seconds = _timed(lambda: step(*inputs), repeats)
        if not train:
            with torch.no_grad():
                return {"logits": step(*inputs), "seconds": seconds}
        loss, logits = step(*inputs)  # one forward: the checked logits and the checked backward
        result: dict[str, Any] = {"logits": logits.detach(), "seconds": seconds}
        loss.backward()
        result["loss"] = loss.detach()
        # Every name of a tied weight (export keeps one of them), with the weight's identity.
        named = list(step.named_parameters(remove_duplicate=False))
        result["grads"] = {k: p.grad for k, p in named if p.grad is not None}
        result["weight_of"] = {k: id(p) for k, p in named}
        _sgd(step.parameters())
        with torch.no_grad():
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
    micro_batches: int | None = None,
    repeats: int = 3,
) -> Verification:
    """Run ``plan`` on ``ndevices`` gloo processes and compare outputs (and gradients) with one device.

    A pipeline plan is captured at the micro-batch size (``micro_batches``
    of them make the batch; by default as many as divide it, up to twice the
    stages) and checked, besides the numbers, to run its blocks in the order
    its schedule predicts. The times kept are the median of ``repeats``
    steps on each side (more repeats see through a loaded host); ``repeats=0``
    checks the numbers alone, untimed (both times 0.0), which saves a large
    model the timed steps' forwards and backwards.
    """
    if repeats < 0:
        raise ParallelError(f"repeats must be 0 (untimed) or more, got {repeats}")
    piped = plan in PIPELINE_PLANS
    if plan not in PLANS and not piped:
        raise ParallelError(
            f"unknown plan {plan!r}; shipped plans: {', '.join([*PLANS, *PIPELINE_PLANS])}"
        )
    model = load_model(spec, seed, dtype)
    inputs = list(example_inputs(vocab_of(model), batch, seq, seed))[: 2 if train else 1]
    expected: list[list[str]] = []
    worker: Callable[..., None]
    args: tuple[Any, ...]
    if piped:
        nmicro = micro_batches or default_micro_batches(batch, ndevices)
        if batch % nmicro:
            raise ParallelError(f"{nmicro} micro-batches do not divide the batch of {batch}")
        graph = capture(Logits(model), (inputs[0][: batch // nmicro],))
        # a plan error is raised here, not in N processes
        if plan == "interlaced":
            interlaced_for(graph, ndevices, nmicro=nmicro, train=train)
        else:
            built = pipeline_plan(plan, graph, ndevices, nmicro=nmicro, train=train)
            for inner in built.inner or []:
                lower(inner)
            assert built.plan.pipe is not None
            expected = [
                [b.kind for b in built.plan.pipe.sequences[built.place(r)[0]]]
                for r in range(ndevices)
            ]
        worker, args = _pipe_worker, (plan, train, nmicro, inputs, repeats)
        if plan == "interlaced":
            expected = [[] for _ in range(ndevices)]
    else:
        graph = capture(LossAndLogits(model) if train else Logits(model), tuple(inputs))
        lower(PLANS[plan](graph, ndevices))  # a plan error is raised here, not in N processes
        worker, args = _worker, (plan, train, inputs, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        program, out = os.path.join(tmp, "program.pt2"), os.path.join(tmp, "rank.pt")
        torch.export.save(graph.program, program)  # before the reference's SGD step changes weights
        ref = _reference(model, train, inputs, repeats)
        del model, graph  # the workers load their own copy; the parent keeps only the reference
        run_ranks(worker, ndevices, (args[0], program, *args[1:], out), what=f"plan {plan!r}")
        if piped:
            got = _merge([torch.load(f"{out}.{r}") for r in range(ndevices)], expected)
        else:
            got = torch.load(f"{out}.0")
    return _compare(spec, plan, ndevices, train, dtype, got, ref, atol)


def default_micro_batches(batch: int, ndevices: int) -> int:
    """As many micro-batches as divide the batch, up to twice the devices."""
    return max(m for m in range(1, 2 * ndevices + 1) if batch % m == 0)


def _merge(parts: list[dict[str, Any]], expected: list[list[str]]) -> dict[str, Any]:
    """One result from every stage's file: the last stage's outputs, every stage's gradients."""
    got = dict(next(part for part in reversed(parts) if "logits" in part))
    got["grads"] = {k: g for part in parts for k, g in part.get("grads", {}).items()}
    got["seconds"] = max(part["seconds"] for part in parts)
    got["as_scheduled"] = [part["trace"] for part in parts] == expected
    return got


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
        bool(got.get("as_scheduled", True)),
    )
