"""``auto``: a search over plans, pruned by constraints, ranked by the cost model under a memory limit.

The space is every shipped plan family with its knobs: data and tensor
parallel; co-shard with 2 or 4 parts per device; pipelines over all devices
with ``n``, ``2n`` or ``4n`` micro-batches (GPipe or 1F1B to train, the
forward-only pipeline to serve); and 3-D with every tensor-parallel width
that leaves at least two stages. As the paper's search does, constraints
prune before anything is priced: a knob the batch, heads or vocabulary do
not divide is dropped by the primitive that refuses it (``PlanError``), and
a plan whose most loaded device exceeds the memory limit is dropped after
its memory is estimated. What remains is ranked by predicted step time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from agentrt.parallelism.comm import CostModel, lower
from agentrt.parallelism.cost import (
    DeviceProfile,
    Estimate,
    OpTimes,
    loss_ops,
    pipeline_estimate,
    spmd_estimate,
)
from agentrt.parallelism.errors import ParallelError
from agentrt.parallelism.graph import Graph, capture
from agentrt.parallelism.models import Logits, NextTokenLoss
from agentrt.parallelism.pipeline import pipeline, stages, three_d
from agentrt.parallelism.plan import Plan
from agentrt.parallelism.plans import coshard, data_parallel, tensor_parallel


@dataclass
class Candidate:
    name: str
    family: str
    estimate: Estimate | None = None
    error: str | None = None
    fits: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"plan": self.name, "family": self.family, "fits": self.fits}
        if self.estimate is not None:
            out.update(
                predicted_step_seconds=self.estimate.seconds,
                predicted_compute_seconds=self.estimate.compute_seconds,
                predicted_comm_seconds=self.estimate.comm_seconds,
                memory_bytes_per_device=self.estimate.memory_bytes,
            )
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Search:
    ndevices: int
    train: bool
    memory_limit: int | None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def ranked(self) -> list[Candidate]:
        priced = [c for c in self.candidates if c.estimate is not None]
        return sorted(priced, key=lambda c: (not c.fits, c.estimate.seconds))  # type: ignore[union-attr]

    @property
    def best(self) -> Candidate:
        fitting = [c for c in self.ranked if c.fits]
        if fitting:
            return fitting[0]
        priced = self.ranked
        if not priced:
            reasons = "; ".join(f"{c.name}: {c.error}" for c in self.candidates[:4])
            raise ParallelError(
                f"no plan applies to this model on {self.ndevices} devices ({reasons})"
            )
        smallest = min(priced, key=lambda c: c.estimate.memory_bytes)  # type: ignore[union-attr]
        need = smallest.estimate.memory_bytes  # type: ignore[union-attr]
        raise ParallelError(
            f"no plan fits {_gib(self.memory_limit or 0)} per device on {self.ndevices} devices: "
            f"the smallest, {smallest.name}, needs {_gib(need)}"
        )


def _gib(n: int) -> str:
    if n >= 2**28:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


Times = Callable[[Graph], OpTimes]


def search(
    model: torch.nn.Module,
    ids: torch.Tensor,
    labels: torch.Tensor,
    ndevices: int,
    *,
    train: bool,
    memory_limit: int | None = None,
    profile: DeviceProfile | None = None,
    comm: CostModel | None = None,
    families: tuple[str, ...] = ("dp", "tp", "coshard", "pp", "3d", "interlaced"),
    concurrent: int = 1,
    cache: bool = True,
) -> Search:
    """Price every candidate plan of ``families`` for ``model`` on ``ndevices`` and rank them.

    ``concurrent``: without a profile, measure operator times with that many
    ranks running at once (``ndevices`` when the plan will run on this host).
    ``cache=False`` measures them afresh instead of reading earlier measurements.
    """
    if ndevices < 1:
        raise ParallelError(f"the device count must be at least 1, got {ndevices}")
    result = Search(ndevices, train, memory_limit)
    batch = ids.shape[0]
    where = next(model.parameters()).device
    if where.type == "meta":
        if profile is None:
            raise ParallelError(
                "a model without weights (meta device) can only be planned with --profile"
            )
        ids, labels = ids.to(where), labels.to(where)
    times_of: dict[int, OpTimes] = {}
    # the part counts the candidates cut operators into: n, and co-shard's k * n (attention)
    splits = (ndevices,) if ndevices > 1 else ()
    colocated = (2 * ndevices, 4 * ndevices) if ndevices > 1 else ()

    def comm_for(group: int) -> CostModel:
        if profile is not None:
            return profile.comm(group)
        return comm or CostModel()

    def times(graph: Graph) -> OpTimes:
        if id(graph) not in times_of:
            times_of[id(graph)] = OpTimes(
                graph,
                profile,
                cache=cache,
                concurrent=concurrent,
                splits=splits,
                colocated=colocated,
            )
        return times_of[id(graph)]

    graphs: dict[Any, Graph] = {}

    def graph_at(size: int) -> Graph:
        """The whole step captured at a batch of ``size``: with its loss in training (SPMD plans)."""
        if not train:
            return logits_at(size)
        if size not in graphs:
            graphs[size] = capture(NextTokenLoss(model), (ids[:size], labels[:size]))
        return graphs[size]

    def logits_at(size: int) -> Graph:
        """The model up to its logits at a micro-batch of ``size``.

        Every pipeline family (``pp``, ``3d``, ``interlaced``) is planned on
        this one capture per micro-batch size, as it runs: the loss is the
        schedule's, beside the last stage.
        """
        key = ("logits", size)
        if key not in graphs:
            graphs[key] = capture(Logits(model), (ids[:size],))
        return graphs[key]

    def loss_at(micro: int) -> Callable[[int], float]:
        """The forward seconds of one of ``micro`` micro-batches' loss, split ``ways`` ways by vocabulary."""

        def seconds(ways: int) -> float:
            if not train:
                return 0.0
            whole = graph_at(batch)
            t = times(whole)
            return sum(t.part(op, micro * ways) for op in loss_ops(whole))

        return seconds

    def add(name: str, family: str, build: Callable[[], Estimate]) -> None:
        cand = Candidate(name, family)
        try:
            cand.estimate = build()
            cand.fits = memory_limit is None or cand.estimate.memory_bytes <= memory_limit
        except ParallelError as exc:
            cand.error = str(exc)
        result.candidates.append(cand)

    def coshard_at(k: int) -> Callable[[Graph], Plan]:
        return lambda g: coshard(g, ndevices, k)

    spmd: dict[str, list[tuple[str, Callable[[Graph], Plan]]]] = {
        "dp": [("dp", lambda g: data_parallel(g, ndevices))],
        "tp": [("tp", lambda g: tensor_parallel(g, ndevices))],
        "coshard": [(f"coshard(k={k})", coshard_at(k)) for k in (2, 4)],
    }
    for family, builders in spmd.items():
        if family not in families:
            continue
        for name, make_plan in builders:

            def build_spmd(n: str = name, mk: Callable[[Graph], Plan] = make_plan) -> Estimate:
                return spmd_estimate(
                    n,
                    lower(mk(graph_at(batch)), comm_for(ndevices)),
                    times(graph_at(batch)),
                    train=train,
                )

            add(name, family, build_spmd)
    micro_counts = sorted({m for m in (ndevices, 2 * ndevices, 4 * ndevices) if batch % m == 0})
    if "pp" in families and ndevices >= 2:
        kinds = ("gpipe", "1f1b") if train else ("infer",)
        for m in micro_counts or [batch]:
            for kind in kinds:

                def build_pp(m: int = m, kind: str = kind) -> Estimate:
                    return _pipe(
                        f"pp({kind},m={m})",
                        logits_at(batch // m),
                        ndevices,
                        m,
                        kind,
                        times,
                        comm_for(2),
                        train,
                        loss_at(m)(1),
                    )

                add(f"pp({kind},m={m})", "pp", build_pp)
    if "3d" in families:
        for tp in (w for w in range(2, ndevices) if ndevices % w == 0 and ndevices // w >= 2):
            for m in micro_counts[:1] or [batch]:
                kind = "1f1b" if train else "infer"
                name = f"3d(tp={tp},pp={ndevices // tp},m={m})"

                def build_3d(
                    m: int = m, tp: int = tp, name: str = name, kind: str = kind
                ) -> Estimate:
                    return _three_d(
                        name,
                        logits_at(batch // m),
                        ndevices,
                        tp,
                        m,
                        kind,
                        times,
                        comm_for,
                        train,
                        loss_at(m)(1),
                    )

                add(name, "3d", build_3d)
    if "interlaced" in families and ndevices >= 2:
        from agentrt.parallelism.interlaced import estimate, interlaced_for

        for m in micro_counts or [batch]:
            name = f"interlaced(m={m})"

            def build(m: int = m, name: str = name) -> Estimate:
                g = logits_at(batch // m)
                built = interlaced_for(g, ndevices, nmicro=m, train=train, cost=comm_for(ndevices))
                return estimate(
                    name, built, times(g), comm_for(ndevices), train=train, loss=loss_at(m)
                )

            add(name, "interlaced", build)
    return result


def _pipe(
    name: str,
    graph: Graph,
    n: int,
    m: int,
    kind: str,
    times: Times,
    comm: CostModel,
    train: bool,
    loss: float,
) -> Estimate:
    from agentrt.parallelism.pipeline import Pipeline

    plan = pipeline(graph, n, nmicro=m, schedule=kind)
    built = Pipeline(plan, stages(plan), 1, None)
    return pipeline_estimate(name, built, graph, times(graph), comm, train=train, loss=loss)


def _three_d(
    name: str,
    graph: Graph,
    n: int,
    tp: int,
    m: int,
    kind: str,
    times: Times,
    comm_for: Callable[[int], CostModel],
    train: bool,
    loss: float,
) -> Estimate:
    built = three_d(graph, n, tp=tp, nmicro=m, schedule=kind)
    return pipeline_estimate(name, built, graph, times(graph), comm_for(tp), train=train, loss=loss)
