"""Local gloo groups start robustly: concurrent runs never share a rendezvous, failures are named."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from agentrt.parallelism.errors import ParallelError
from agentrt.parallelism.spawn import run_ranks


def _sum_ranks(rank: int, n: int, out: str) -> None:
    x = torch.tensor([float(rank + 1)])
    dist.all_reduce(x)
    Path(f"{out}.{rank}").write_text(f"{n} {x.item()}")


def _fail_on_rank_one(rank: int, n: int) -> None:
    dist.barrier()
    if rank == 1:
        raise ValueError("rank one refuses")


def _exit_on_rank_one(rank: int, n: int) -> None:
    dist.barrier()
    if rank == 1:
        os._exit(3)


def test_two_runs_started_together_each_form_their_own_group(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def run(tag: str) -> None:
        try:
            run_ranks(_sum_ranks, 2, (str(tmp_path / tag),), what=tag)
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for tag in ("a", "b"):
        for rank in (0, 1):
            assert (tmp_path / f"{tag}.{rank}").read_text() == "2 3.0"


def test_an_exception_in_a_rank_is_a_clear_error() -> None:
    with pytest.raises(
        ParallelError, match=r"demo failed on 2 processes \(rank 1\): ValueError: rank one refuses"
    ):
        run_ranks(_fail_on_rank_one, 2, what="demo")


def test_a_process_that_dies_after_joining_is_named_with_its_exit_code() -> None:
    with pytest.raises(
        ParallelError, match="demo: process 1 of 2 exited after joining the group with exit code 3"
    ):
        run_ranks(_exit_on_rank_one, 2, what="demo")


def _report_cores(rank: int, n: int, out: str) -> None:
    """Each thread of the rank's process (gloo's included) and the rank's core set."""
    threads = [os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")]
    dist.barrier()
    Path(f"{out}.{rank}").write_text(" ".join(",".join(map(str, sorted(t))) for t in threads))


def test_each_rank_runs_on_one_core_of_its_own_with_the_threads_gloo_started(
    tmp_path: Path,
) -> None:
    cores = sorted(os.sched_getaffinity(0))
    n = min(2, len(cores))
    run_ranks(_report_cores, n, (str(tmp_path / "r"),), what="cores")
    for rank in range(n):
        threads = (tmp_path / f"r.{rank}").read_text().split()
        assert len(threads) > 1  # gloo's threads besides the rank's own
        assert set(threads) == {str(cores[rank])}


def test_more_ranks_than_cores_are_left_to_the_os(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    n = len(cores) + 1
    run_ranks(_report_cores, n, (str(tmp_path / "r"),), what="cores")
    for rank in range(n):
        threads = (tmp_path / f"r.{rank}").read_text().split()
        assert set(threads) == {",".join(map(str, cores))}
