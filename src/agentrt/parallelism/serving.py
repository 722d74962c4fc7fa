"""Serving a decoder over several local processes: the Megatron split of its layers, and the group.

The split is the one :func:`agentrt.parallelism.plans.tensor_parallel` gives a
transformer block (q/k/v and gate/up split by output columns, o and down by
input rows, one all-reduce after each of the two), stated over the engine's
own dimensions instead of a captured graph: attention is split by whole
KV-head groups (each rank keeps the query heads that read its KV heads, so
the paged KV cache splits by KV head with no communication inside
attention) and the MLP by hidden units. Unlike the planner, which partitions
only dimensions the device count divides, a KV-head count the group size
does not divide is split unevenly, in whole groups (SmolLM2-135M's 3 KV
heads over 2 ranks: 2 and 1).

:class:`LocalGroup` runs rank 0 in the calling process (the engine's driver)
and ranks 1..n-1 in spawned processes, joined through a store the caller
hosts (see :mod:`agentrt.parallelism.spawn` for why). Peers' deaths reach
rank 0 as errors of the collective it waits in: gloo reports a closed
connection at once, and :meth:`LocalGroup.failure` names the rank and its
exit code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore
from torch.multiprocessing.spawn import ProcessContext, start_processes

from agentrt.log import get_logger
from agentrt.parallelism.errors import ParallelError, PlanError

log = get_logger(__name__)

_HOST = "127.0.0.1"
# Workers wait for the driver's next step for as long as the server idles; a peer's death
# still ends the wait at once (gloo sees the connection close).
_IDLE_TIMEOUT = timedelta(days=7)
# The MLP's hidden units are split in multiples of this where the size allows, so that
# int4 weight groups (32 input features, see engine/matmul.py) never straddle two ranks.
_MLP_ALIGN = 32


@dataclass(frozen=True)
class RankSplit:
    """What one rank of a tensor-parallel decoder holds: half-open ranges of heads and units."""

    rank: int
    size: int
    heads: tuple[int, int]  # query heads
    kv_heads: tuple[int, int]
    mlp: tuple[int, int]  # the MLP's hidden units (gate/up rows, down columns)
    layers: tuple[int, int] | None = None  # a pipeline stage's decoder layers; None: all
    stage: int = 0
    stages: int = 1

    @property
    def num_heads(self) -> int:
        return self.heads[1] - self.heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]


def _chunks(total: int, n: int) -> list[tuple[int, int]]:
    """``total`` items in ``n`` contiguous ranges whose sizes differ by at most one, larger first."""
    base, extra = divmod(total, n)
    ranges, start = [], 0
    for i in range(n):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def megatron_split(
    num_heads: int, num_kv_heads: int, intermediate_size: int, n: int
) -> list[RankSplit]:
    """Split a decoder's attention by whole KV-head groups and its MLP by hidden units over ``n`` ranks.

    Raises :class:`PlanError` naming the dimension that has fewer parts than ``n``.
    """
    if n < 1:
        raise PlanError(f"tensor_parallel_size must be >= 1, got {n}")
    if num_kv_heads < n:
        raise PlanError(
            f"tensor_parallel_size {n} is larger than the model's {num_kv_heads} KV heads "
            "(num_key_value_heads): attention splits by whole KV heads"
        )
    if num_heads % num_kv_heads:
        raise PlanError(
            f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
        )
    group = num_heads // num_kv_heads
    align = _MLP_ALIGN if intermediate_size % _MLP_ALIGN == 0 else 1
    units = intermediate_size // align
    if units < n:
        raise PlanError(
            f"tensor_parallel_size {n} is larger than the model's MLP (intermediate_size "
            f"{intermediate_size})"
        )
    return [
        RankSplit(
            rank=rank,
            size=n,
            heads=(kv[0] * group, kv[1] * group),
            kv_heads=kv,
            mlp=(mlp[0] * align, mlp[1] * align),
        )
        for rank, (kv, mlp) in enumerate(
            zip(_chunks(num_kv_heads, n), _chunks(units, n), strict=True)
        )
    ]


def engine_split(model_config: Any, n: int) -> dict[str, Any]:
    """What ``agentrt serve --tensor-parallel-size n`` gives each rank of this model (for ``agentrt plan --serve``).

    ``{"tensor_parallel_size", "heads", "kv_heads", "mlp"}`` (per-rank counts),
    or ``{"tensor_parallel_size", "error"}`` when the model has no such
    dimensions or ``n`` cannot split them.
    """
    text = (
        model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    )
    heads = getattr(text, "num_attention_heads", None) if text is not None else None
    mlp = getattr(text, "intermediate_size", None)
    if heads is None or mlp is None:
        return {"tensor_parallel_size": n, "error": "not a decoder with attention heads and an MLP"}
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    try:
        splits = megatron_split(heads, kv_heads, mlp, n)
    except PlanError as exc:
        return {"tensor_parallel_size": n, "error": str(exc)}
    return {
        "tensor_parallel_size": n,
        "heads": [s.num_heads for s in splits],
        "kv_heads": [s.num_kv_heads for s in splits],
        "mlp": [s.mlp[1] - s.mlp[0] for s in splits],
    }


def pipeline_split(
    num_heads: int, num_kv_heads: int, intermediate_size: int, num_layers: int, n: int
) -> list[RankSplit]:
    """Whole layers in ``n`` contiguous stages (sizes differing by at most one), rank i = stage i.

    Raises :class:`PlanError` naming ``num_hidden_layers`` when there are fewer layers than stages.
    """
    if n < 2:
        raise PlanError(f"pipeline_parallel_size must be >= 2 to split layers, got {n}")
    if num_layers < n:
        raise PlanError(
            f"pipeline_parallel_size {n} is larger than the model's {num_layers} layers "
            "(num_hidden_layers)"
        )
    return [
        RankSplit(
            rank=stage,
            size=n,
            heads=(0, num_heads),
            kv_heads=(0, num_kv_heads),
            mlp=(0, intermediate_size),
            layers=layers,
            stage=stage,
            stages=n,
        )
        for stage, layers in enumerate(_chunks(num_layers, n))
    ]


def backend_for(device: torch.device) -> str:
    """The collective backend of the activations' all-reduce: NCCL on CUDA, gloo elsewhere."""
    return "nccl" if device.type == "cuda" else "gloo"


class Collectives:
    """One rank's two groups: gloo for the driver's step messages, and the activations' backend.

    On CPU both are the same gloo group. On CUDA the all-reduce runs on NCCL
    while the step messages (host-side lists of ints) stay on gloo.
    """

    def __init__(self, store: Any, rank: int, size: int, device: torch.device) -> None:
        self.rank = rank
        self.size = size
        # Backend objects of their own, not the default group: the server process may hold
        # other groups, and several engines may come and go in one process (tests).
        self.control: Any = dist.ProcessGroupGloo(store, rank, size, _IDLE_TIMEOUT)
        self.data: Any = self.control
        if backend_for(device) == "nccl":
            torch.cuda.set_device(device)
            nccl: Any = dist.ProcessGroupNCCL  # present in CUDA builds only
            self.data = nccl(PrefixStore("nccl", store), rank, size, nccl.Options())

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's ``tensor`` into every rank's (same shape and dtype)."""
        self.control.broadcast(tensor, 0).wait()

    def barrier(self) -> None:
        """Return once every rank has called it (an all-reduce: a broadcast could return early)."""
        self.control.allreduce([torch.zeros(1)]).wait()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        self.data.allreduce([tensor]).wait()
        return tensor

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.data.send([tensor.contiguous()], dst, 0).wait()

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        self.data.recv([tensor], src, 0).wait()
        return tensor


class StagePipe:
    """How one pipeline stage's decoder gets its input and hands on its output.

    Stage 0 (the driver, which holds the sampler) embeds the tokens; every
    later stage receives the previous stage's hidden states; the last stage
    sends the rows whose logits are kept back to stage 0, which applies the
    final norm and ``lm_head``. One step passes through the stages in turn
    (no micro-batches): pipeline stages split the weights and the KV cache
    by layer, not the step's time.
    """

    def __init__(self, collectives: Collectives, split: RankSplit) -> None:
        self.collectives = collectives
        self.stage = split.stage
        self.stages = split.stages
        self.first = split.stage == 0
        self.last = split.stage == split.stages - 1

    def receive(self, tokens: int, hidden: int, like: torch.Tensor) -> torch.Tensor:
        """The previous stage's ``[tokens, hidden]`` output."""
        buffer = like.new_empty(tokens, hidden)
        return self.collectives.recv(buffer, self.stage - 1)

    def pass_on(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor | None:
        """Send ``h`` on; on stage 0, return the last stage's kept rows (else ``None``)."""
        if not self.last:
            self.collectives.send(h, self.stage + 1)
        if self.last:
            self.collectives.send(h.index_select(0, keep), 0)
            return None
        if self.first:
            return self.collectives.recv(h.new_empty(keep.shape[0], h.shape[1]), self.stages - 1)
        return None


def join_group(port: int, prefix: str, rank: int, size: int, device: torch.device) -> Collectives:
    """A worker's side of :meth:`LocalGroup.start`: connect to the driver's store and the groups."""
    client = TCPStore(_HOST, port, None, False, timeout=timedelta(seconds=120))
    return Collectives(PrefixStore(prefix, client), rank, size, device)


class LocalGroup:
    """Rank 0 here, ranks 1..n-1 in spawned processes running ``target(rank, n, port, prefix, *args)``.

    ``target`` must be importable by name (spawn pickles it), call
    :func:`join_group` first, and leave with ``os._exit`` (see
    :mod:`agentrt.parallelism.spawn`: gloo's threads at interpreter exit can
    abort a finished process). Tensors in ``args`` reach the workers through
    shared memory, not copies.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self.size = size
        self.device = device
        self._store: Any = None
        self._context: ProcessContext | None = None
        self.collectives: Collectives | None = None

    def start(self, target: Callable[..., None], args: tuple[Any, ...]) -> Collectives:
        self._store = TCPStore(
            _HOST, 0, None, True, timeout=timedelta(seconds=120), wait_for_workers=False
        )
        prefix = f"agentrt-tp/{os.getpid()}/{uuid.uuid4().hex}"
        self._context = start_processes(  # type: ignore[no-untyped-call]
            _worker_entry,
            args=(target, self.size, self._store.port, prefix, args),
            nprocs=self.size - 1,
            join=False,
            start_method="spawn",
        )
        try:
            self.collectives = Collectives(
                PrefixStore(prefix, self._store), 0, self.size, self.device
            )
        except RuntimeError as exc:
            self.stop(timeout=5.0)
            raise self.failure(exc) from None
        log.info("tensor_parallel_group_ready", ranks=self.size, backend=backend_for(self.device))
        return self.collectives

    def failure(self, exc: BaseException) -> ParallelError:
        """The error to raise for a failed collective: the worker that exited, else ``exc`` itself."""
        context = self._context
        if context is not None:
            for index, process in enumerate(context.processes):
                process.join(timeout=2.0)
                if process.exitcode is not None:
                    return ParallelError(
                        f"tensor-parallel worker rank {index + 1} of {self.size} exited with "
                        f"code {process.exitcode} (see its log above)"
                    )
        return ParallelError(f"tensor-parallel group failed: {exc}")

    def stop(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds for the workers to leave, then kill the ones left."""
        context, self._context = self._context, None
        if context is None:
            return
        for process in context.processes:
            process.join(timeout=timeout)
            if process.exitcode is None:
                log.warning("tensor_parallel_worker_killed", pid=process.pid)
                process.kill()
                process.join(timeout=timeout)
        self.collectives = None
        self._store = None


def _worker_entry(
    index: int,
    target: Callable[..., None],
    size: int,
    port: int,
    prefix: str,
    args: tuple[Any, ...],
) -> None:
    try:
        target(index + 1, size, port, prefix, *args)
    except BaseException:
        log.exception("tensor_parallel_worker_failed", rank=index + 1)
        os._exit(1)
    os._exit(0)
