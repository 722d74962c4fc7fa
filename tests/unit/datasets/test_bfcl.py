"""BFCL v4 multi-turn reader, on the real data files of the installed bfcl-eval package."""

from __future__ import annotations

import pytest

from agentrt.datasets import load_bfcl_tasks
from agentrt.datasets.bfcl import CATEGORIES


def test_reads_every_multi_turn_category() -> None:
    tasks = load_bfcl_tasks()
    assert len(tasks) == 800
    assert {t.category for t in tasks} == set(CATEGORIES)


def test_task_has_turns_docs_and_ground_truth_per_turn() -> None:
    task = load_bfcl_tasks(("base",), limit=1)[0]
    assert task.id == "multi_turn_base_0"
    assert task.turns[0][0]["role"] == "user"
    assert "final_report.pdf" in task.turns[0][0]["content"]
    assert len(task.ground_truth) == len(task.turns)
    assert task.ground_truth[0][0] == "cd(folder='document')"
    names = {d["name"] for d in task.function_docs}
    assert {"cd", "mv", "grep", "post_tweet"} <= names
    assert "cp" not in names  # the task's excluded function is not offered
    assert set(task.apis) == {"GorillaFileSystem", "TwitterAPI"}
    assert "GorillaFileSystem" in task.initial_config


def test_miss_func_tasks_keep_the_held_back_functions() -> None:
    task = load_bfcl_tasks(("miss_func",), limit=1)[0]
    assert task.missed_function == {"3": ["sort"]}
    assert task.turns[3] == []


def test_limit_and_unknown_category() -> None:
    assert len(load_bfcl_tasks(limit=7)) == 7
    with pytest.raises(ValueError, match="unknown BFCL category"):
        load_bfcl_tasks(("nope",))  # type: ignore[arg-type]
