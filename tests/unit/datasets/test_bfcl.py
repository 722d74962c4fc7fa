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


def test_ground_truth_calls_parse_into_names_and_keyword_arguments() -> None:
    from agentrt.datasets import parse_call

    task = load_bfcl_tasks(("base",), limit=1)[0]
    docs = task.function_docs
    assert parse_call("cd(folder='document')", docs) == ("cd", {"folder": "document"})
    assert parse_call("grep(file_name='a.txt',pattern='budget')", docs) == (
        "grep", {"file_name": "a.txt", "pattern": "budget"})
    # Positional arguments take the documented parameter names, in order.
    assert parse_call("sort('final_report.pdf')", docs) == ("sort", {"file_name": "final_report.pdf"})
    for bad in ("cd(", "os.system('x')", "cd(folder=open('x'))", "42", "sort('a', 'b', 'c', 'd')"):
        with pytest.raises(ValueError):
            parse_call(bad, docs)


def test_every_base_ground_truth_call_parses() -> None:
    from agentrt.datasets import parse_call

    tasks = load_bfcl_tasks(("base",))
    calls = [parse_call(c, t.function_docs) for t in tasks for turn in t.ground_truth for c in turn]
    assert len(calls) > 1000
    assert all(name and isinstance(arguments, dict) for name, arguments in calls)
