"""The simulated BFCL environment executes tools on the task's state and never raises at the agent."""

from __future__ import annotations

import json

import pytest

from agentrt.agents.bfcl_env import Environment, FileSystem, to_json_schema
from agentrt.datasets import load_bfcl_tasks


@pytest.fixture(scope="module")
def tasks():
    return {t.id: t for t in load_bfcl_tasks(("base",))}


def test_file_system_tools_change_the_task_state(tasks) -> None:
    slept: list[float] = []
    env = Environment(tasks["multi_turn_base_0"], sleep=slept.append)
    assert json.loads(env.execute("ls", {}))["current_directory_content"] == ["archive", "document"]
    env.execute("cd", {"folder": "document"})
    env.execute("mkdir", {"dir_name": "temp"})
    assert "moved" in json.loads(env.execute("mv", {"source": "final_report.pdf", "destination": "temp"}))["result"]
    assert json.loads(env.execute("ls", {}))["current_directory_content"] == ["previous_report.pdf", "temp"]
    env.execute("cd", {"folder": "temp"})
    grep = json.loads(env.execute("grep", {"file_name": "final_report.pdf", "pattern": "budget analysis"}))
    assert grep["matching_lines"] and "budget analysis" in grep["matching_lines"][0]
    assert json.loads(env.execute("pwd", {}))["current_working_directory"] == "/workspace/document/temp"
    assert len(slept) == 8 and all(s > 0 for s in slept)


def test_bad_calls_become_error_observations(tasks) -> None:
    env = Environment(tasks["multi_turn_base_0"], sleep=lambda s: None)
    assert "no such file" in json.loads(env.execute("cat", {"file_name": "missing.txt"}))["error"]
    assert "unknown function" in json.loads(env.execute("launch_rocket", {}))["error"]
    assert "JSON object" in json.loads(env.execute("ls", None))["error"]
    assert "bad arguments" in json.loads(env.execute("cd", {"directory": "x"}))["error"]


def test_service_apis_check_required_arguments_and_answer_their_schema(tasks) -> None:
    task = next(t for t in tasks.values() if "TwitterAPI" in t.apis)
    env = Environment(task, sleep=lambda s: None)
    assert "missing required" in json.loads(env.execute("post_tweet", {}))["error"]
    posted = json.loads(env.execute("post_tweet", {"content": "hello"}))
    assert set(posted) == {"id", "username", "content", "tags", "mentions"}
    assert posted["content"] == "hello"
    again = json.loads(env.execute("post_tweet", {"content": "hello"}))
    assert again == posted  # deterministic for the same call


def test_math_api_computes_for_real() -> None:
    task = next(t for t in load_bfcl_tasks(("base",)) if "MathAPI" in t.apis)
    env = Environment(task, sleep=lambda s: None)
    assert json.loads(env.execute("divide", {"a": 7, "b": 2}))["result"] == 3.5
    assert json.loads(env.execute("mean", {"numbers": [1, 2, 3, 6]}))["result"] == 3.0
    assert "zero" in json.loads(env.execute("divide", {"a": 1, "b": 0}))["error"]


def test_tool_latency_is_seeded_and_scaled(tasks) -> None:
    task = tasks["multi_turn_base_0"]
    draws = [[], [], []]
    for record, (seed, scale) in zip(draws, [(1, 1.0), (1, 1.0), (1, 0.0)], strict=True):
        env = Environment(task, seed=seed, latency_scale=scale, sleep=record.append)
        for _ in range(5):
            env.execute("post_tweet", {"content": "x"})
    assert draws[0] == draws[1]
    assert all(d > 0.05 for d in draws[0])  # a service API: a network round trip
    assert draws[2] == [0.0] * 5


def test_tools_are_valid_json_schema(tasks) -> None:
    env = Environment(tasks["multi_turn_base_0"], sleep=lambda s: None)
    tools = env.tools()
    assert {t["function"]["name"] for t in tools} >= {"ls", "cd", "post_tweet"}
    text = json.dumps(tools)
    assert '"dict"' not in text and '"float"' not in text
    assert to_json_schema({"type": "dict", "properties": {"x": {"type": "tuple", "items": {"type": "float"}}}}) == {
        "type": "object", "properties": {"x": {"type": "array", "items": {"type": "number"}}}
    }


def test_file_system_edge_cases() -> None:
    fs = FileSystem({"root": {"home": {"type": "directory", "contents": {
        "a.txt": {"type": "file", "content": "b\na\nc"}, "sub": {"type": "directory", "contents": {}}}}}})
    assert fs.sort("a.txt")["sorted_content"] == "a\nb\nc"
    assert fs.tail("a.txt", lines=2)["last_lines"] == "a\nc"
    assert fs.wc("a.txt", mode="l")["count"] == 3
    assert fs.find(name="a.txt")["matches"] == ["./a.txt"]
    fs.cp("a.txt", "sub")
    assert fs.find(name="a.txt")["matches"] == ["./a.txt", "./sub/a.txt"]
    fs.echo("x\ny", "b.txt")
    assert fs.diff("a.txt", "b.txt")["diff_lines"]
