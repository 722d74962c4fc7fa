"""Workload generators: reproducible, DAG-shaped, and sized like the paper's workloads."""

from __future__ import annotations

import itertools
import statistics

import pytest

from agentrt.datasets import load_bfcl_tasks, load_conversation_tokens, load_token_counter
from agentrt.sim.spec import ProgramSpec
from agentrt.sim.workloads import (
    BfclWorkload,
    LatsWorkload,
    MixedWorkload,
    SharegptWorkload,
    make_workload,
    poisson_arrivals,
)


@pytest.fixture(scope="module")
def sharegpt() -> SharegptWorkload:
    return SharegptWorkload(load_conversation_tokens(limit=200))


@pytest.fixture(scope="module")
def bfcl() -> BfclWorkload:
    return BfclWorkload(load_bfcl_tasks(limit=40), load_token_counter())


def _shape(programs: list[ProgramSpec]) -> list[tuple[object, ...]]:
    return [
        (
            p.program_id,
            p.kind,
            tuple(
                (c.prompt_tokens, c.decode_tokens, c.parents, c.delay, c.segments) for c in p.calls
            ),
        )
        for p in programs
    ]


def _assert_valid_dags(programs: list[ProgramSpec], max_context: int = 8192) -> None:
    for p in programs:
        for i, c in enumerate(p.calls):
            assert c.index == i
            assert all(0 <= parent < i for parent in c.parents)
            assert sum(n for _, n in c.segments) == c.prompt_tokens + c.decode_tokens <= max_context
            assert c.delay >= 0


@pytest.mark.parametrize("name", ["sharegpt", "bfcl", "lats", "mixed"])
def test_same_seed_same_programs_other_seed_other_programs(
    name: str, sharegpt: SharegptWorkload, bfcl: BfclWorkload
) -> None:
    workload = {
        "sharegpt": sharegpt,
        "bfcl": bfcl,
        "lats": LatsWorkload(),
        "mixed": MixedWorkload([sharegpt, bfcl, LatsWorkload()]),
    }[name]
    a = workload.generate(12, seed=7)
    assert _shape(a) == _shape(workload.generate(12, seed=7))
    assert _shape(a) != _shape(workload.generate(12, seed=8))
    _assert_valid_dags(a)


def test_sharegpt_replays_a_conversation_with_growing_history(sharegpt: SharegptWorkload) -> None:
    programs = sharegpt.generate(30, seed=1)
    for p in programs:
        assert p.kind == "sharegpt"
        for prev, call in zip(p.calls, p.calls[1:], strict=False):
            assert call.parents == (prev.index,)
            # The previous call's prompt and answer are a prefix of this prompt.
            assert call.prompt_tokens > prev.prompt_tokens + prev.decode_tokens
            assert call.segments[1][0] == prev.segments[1][0] == p.program_id
        assert p.calls[0].segments[0] == ("chat:system", 32)


def test_sharegpt_assistant_turns_become_calls(sharegpt: SharegptWorkload) -> None:
    table = load_conversation_tokens(limit=200)
    mean_turns = statistics.mean(c.assistant_turns for c in table)
    programs = sharegpt.generate(400, seed=2)
    # Close to the data's assistant turns per conversation (long ones are cut at the context length).
    assert statistics.mean(len(p.calls) for p in programs) == pytest.approx(mean_turns, rel=0.25)


def test_bfcl_prompts_carry_function_docs_and_tools_take_time(bfcl: BfclWorkload) -> None:
    programs = bfcl.generate(40, seed=3)
    calls = [c for p in programs for c in p.calls]
    assert all(c.segments[0][0].startswith("bfcl:docs:") for c in calls)
    assert min(c.segments[0][1] for c in calls) > 1000  # real JSON docs of the task's APIs
    assert any(c.delay > 0 for c in calls)  # tool latencies between calls
    # Short function-call outputs, several calls per task (one per ground-truth call, plus answers).
    assert statistics.mean(c.decode_tokens for c in calls) < 80
    assert 5 < statistics.mean(len(p.calls) for p in programs) < 20


def test_lats_matches_the_papers_per_call_averages() -> None:
    programs = LatsWorkload().generate(300, seed=4)
    calls = [c for p in programs for c in p.calls]
    assert statistics.mean(len(p.calls) for p in programs) == pytest.approx(159.7, rel=0.15)
    assert max(len(p.calls) for p in programs) <= 400
    assert statistics.mean(c.prompt_tokens for c in calls) == pytest.approx(467.2, rel=0.1)
    assert statistics.mean(c.decode_tokens for c in calls) == pytest.approx(72.6, rel=0.1)


def test_lats_is_a_tree_search_with_parallel_branches() -> None:
    program = LatsWorkload().generate(1, seed=5)[0]
    roots = [c for c in program.calls if not c.parents]
    assert len(roots) == LatsWorkload.children  # the first expansion runs 5 branches at once
    later = [c for c in program.calls if len(c.parents) == LatsWorkload.children]
    assert later  # the next iteration waits for all value evaluations of the previous one
    assert len({c.thread for c in program.calls}) == LatsWorkload.children


def test_mixed_has_equal_parts() -> None:
    programs = make_workload("mixed", sharegpt_limit=100, bfcl_limit=20).generate(30, seed=6)
    kinds = [p.kind for p in programs]
    assert {k: kinds.count(k) for k in set(kinds)} == {"sharegpt": 10, "bfcl": 10, "lats": 10}


def test_poisson_arrivals_are_seeded_and_scale_with_rate() -> None:
    programs = LatsWorkload().generate(400, seed=1)
    slow = poisson_arrivals(programs, 0.5, seed=9)
    fast = poisson_arrivals(programs, 2.0, seed=9)
    assert [p.arrival for p in slow] == [p.arrival for p in poisson_arrivals(programs, 0.5, seed=9)]
    assert slow[0].arrival == 0.0
    assert all(b.arrival >= a.arrival for a, b in itertools.pairwise(slow))
    assert fast[-1].arrival == pytest.approx(slow[-1].arrival / 4)
    assert len(programs) / slow[-1].arrival == pytest.approx(0.5, rel=0.15)
    with pytest.raises(ValueError):
        poisson_arrivals(programs, 0.0, seed=1)


def test_unknown_workload_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown workload 'chess'"):
        make_workload("chess")
