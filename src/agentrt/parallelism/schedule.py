"""Phase 2 in time: micro-batch schedules of a pipeline, checked before anything runs.

A schedule is, per device, the sequence of blocks it runs: ``F`` (the forward
of one stage on one micro-batch) and ``B`` (its backward). A block depends on
the blocks that produce its inputs: ``F(s, m)`` on ``F(s-1, m)``; ``B(s, m)``
on ``F(s, m)`` and ``B(s+1, m)``. :meth:`PipeSchedule.simulate` plays the
sequences against those dependencies (with block durations, it is the
pipeline's predicted makespan) and refuses a schedule in which a consumer is
ordered before its producer, naming both.

The generators follow ``torch.distributed.pipelining``'s orders exactly
(GPipe: every forward, then every backward; 1F1B: stage ``s`` runs
``S - s`` forwards before alternating; inference: forwards only), so the
table predicted here is the order torch's schedules execute, which the gloo
tests assert block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrt.parallelism.errors import ScheduleError

KINDS = ("gpipe", "1f1b", "infer")


@dataclass(frozen=True)
class Block:
    kind: str  # "F" | "B"
    stage: int
    micro: int

    def __str__(self) -> str:
        return f"{self.kind}(stage {self.stage}, micro-batch {self.micro})"


@dataclass
class PipeSchedule:
    """``sequences[d]``: the blocks device ``d`` runs, in order (stage ``d`` lives on device ``d``)."""

    kind: str
    nstages: int
    nmicro: int
    sequences: list[list[Block]]

    @property
    def train(self) -> bool:
        return self.kind != "infer"

    def producers(self, block: Block) -> list[Block]:
        s, m = block.stage, block.micro
        if block.kind == "F":
            return [Block("F", s - 1, m)] if s > 0 else []
        deps = [Block("F", s, m)]
        if s < self.nstages - 1:
            deps.append(Block("B", s + 1, m))
        return deps

    def check(self) -> None:
        self.simulate([0.0] * self.nstages, [0.0] * self.nstages, 0.0)

    def simulate(
        self,
        forward: list[float],
        backward: list[float],
        hop: float,
        hop_back: float | None = None,
    ) -> float:
        """The makespan when stage ``s`` takes ``forward[s]``/``backward[s]`` and a hop between stages ``hop``
        (a gradient's hop back up the stages ``hop_back``; ``hop`` when not given).

        Raises :class:`ScheduleError` for a missing or repeated block, or one ordered before its producer.
        """
        self._check_blocks()
        back = hop if hop_back is None else hop_back
        finish: dict[Block, float] = {}
        free = [0.0] * len(self.sequences)
        cursor = [0] * len(self.sequences)
        remaining = sum(len(seq) for seq in self.sequences)
        while remaining:
            progressed = False
            for d, seq in enumerate(self.sequences):
                while cursor[d] < len(seq):
                    block = seq[cursor[d]]
                    deps = self.producers(block)
                    if any(p not in finish for p in deps):
                        break
                    start = max(
                        [free[d]]
                        + [
                            finish[p]
                            + (0.0 if p.stage == block.stage else back if p.kind == "B" else hop)
                            for p in deps
                        ]
                    )
                    took = (forward if block.kind == "F" else backward)[block.stage]
                    finish[block] = free[d] = start + took
                    cursor[d] += 1
                    remaining -= 1
                    progressed = True
            if not progressed:
                raise ScheduleError(self._blocked(finish, cursor))
        return max(free)

    def _check_blocks(self) -> None:
        if len(self.sequences) != self.nstages:
            raise ScheduleError(f"{len(self.sequences)} device sequences for {self.nstages} stages")
        kinds = ("F", "B") if self.train else ("F",)
        for d, seq in enumerate(self.sequences):
            want = {Block(k, d, m) for k in kinds for m in range(self.nmicro)}
            if len(seq) != len(set(seq)) or set(seq) != want:
                extra = sorted(map(str, set(seq) - want))
                missing = sorted(map(str, want - set(seq)))
                raise ScheduleError(
                    f"device {d} must run each of its stage's blocks once; "
                    f"missing {missing[:2]}, unexpected or repeated {extra[:2] or 'blocks'}"
                )

    def _blocked(self, finish: dict[Block, float], cursor: list[int]) -> str:
        for d, seq in enumerate(self.sequences):
            if cursor[d] == len(seq):
                continue
            block = seq[cursor[d]]
            for p in self.producers(block):
                if p in finish:
                    continue
                where = p.stage
                if where == d:
                    return f"device {d} runs {block} before {p}, which produces its input"
                stuck = self.sequences[where][cursor[where]]
                return (
                    f"device {d} waits in {block} for {p}, which device {where} "
                    f"only runs after {stuck}: a consumer is ordered before its producer"
                )
        raise AssertionError("a blocked schedule always has a waiting block")


def gpipe(nstages: int, nmicro: int) -> PipeSchedule:
    seqs = [
        [Block("F", s, m) for m in range(nmicro)] + [Block("B", s, m) for m in range(nmicro)]
        for s in range(nstages)
    ]
    return PipeSchedule("gpipe", nstages, nmicro, seqs)


def one_f_one_b(nstages: int, nmicro: int) -> PipeSchedule:
    seqs = []
    for s in range(nstages):
        warmup = min(nmicro, nstages - s)
        seq = [Block("F", s, m) for m in range(warmup)]
        f, b = warmup, 0
        while b < nmicro:
            seq.append(Block("B", s, b))
            b += 1
            if f < nmicro:
                seq.append(Block("F", s, f))
                f += 1
        seqs.append(seq)
    return PipeSchedule("1f1b", nstages, nmicro, seqs)


def inference(nstages: int, nmicro: int) -> PipeSchedule:
    seqs = [[Block("F", s, m) for m in range(nmicro)] for s in range(nstages)]
    return PipeSchedule("infer", nstages, nmicro, seqs)


def make(kind: str, nstages: int, nmicro: int) -> PipeSchedule:
    if nmicro < 1 or nstages < 1:
        raise ScheduleError(
            f"a pipeline needs at least one stage and one micro-batch, got {nstages}/{nmicro}"
        )
    builders = {"gpipe": gpipe, "1f1b": one_f_one_b, "infer": inference}
    if kind not in builders:
        raise ScheduleError(f"unknown pipeline schedule {kind!r}; known: {', '.join(KINDS)}")
    return builders[kind](nstages, nmicro)
