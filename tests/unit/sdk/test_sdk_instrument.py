"""The thread instrumentation: installed once, idempotent, invisible outside programs, switchable off."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.unit.sdk.recording import RecordingServer, ask

import agentrt
from agentrt.sdk import instrument as inst

user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user_var", default="unset")


def in_thread(fn: object) -> object:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))  # type: ignore[operator]
    t.start()
    t.join()
    return out[0]


def test_installing_twice_wraps_once() -> None:
    agentrt.instrument()
    start, submit = threading.Thread.start, ThreadPoolExecutor.submit
    agentrt.instrument()
    assert threading.Thread.start is start and ThreadPoolExecutor.submit is submit
    assert inst.is_instrumented()


def test_outside_a_program_threads_start_with_a_fresh_context_as_before() -> None:
    user_var.set("main")
    assert in_thread(user_var.get) == "unset"
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(agentrt.current_program).result() is None


def test_inside_a_program_threads_see_a_copy_of_the_starting_context() -> None:
    user_var.set("main")
    with agentrt.program():
        seen = in_thread(user_var.get)
        child = in_thread(agentrt.current_program)
    assert seen == "main"
    assert child is not None and child.thread_id == "1"  # type: ignore[attr-defined]


def test_each_submitted_task_runs_in_its_own_copy() -> None:
    marker: contextvars.ContextVar[int] = contextvars.ContextVar("marker", default=0)

    def bump() -> int:
        marker.set(marker.get() + 1)
        return marker.get()

    with agentrt.program(), ThreadPoolExecutor(1) as pool:
        assert [pool.submit(bump).result() for _ in range(3)] == [1, 1, 1]


def test_switched_off_threads_run_outside_the_program(server: RecordingServer) -> None:
    client = server.sync_client()
    agentrt.instrument(threads=False)
    assert not inst.is_instrumented()
    with agentrt.program():  # entering a program does not switch it back on
        assert not inst.is_instrumented()
        ask(client, "main")
        in_thread(lambda: ask(client, "thread"))
    calls = {c.prompt: c for c in server.calls()}
    assert calls["main"].program is not None
    assert calls["thread"].headers == {}
    agentrt.instrument(threads=True)
    assert inst.is_instrumented()


def test_the_environment_variable_switches_it_off_for_the_process() -> None:
    code = (
        "import threading, agentrt\n"
        "from agentrt.sdk.instrument import is_instrumented\n"
        "with agentrt.program():\n"
        "    out = []\n"
        "    t = threading.Thread(target=lambda: out.append(agentrt.current_program()))\n"
        "    t.start(); t.join()\n"
        "print(is_instrumented(), out[0])\n"
    )
    for value, expected in (("0", "False None"), ("1", "True ProgramContext")):
        env = {**os.environ, inst.ENV_VAR: value}
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert result.stdout.startswith(expected), result.stdout + result.stderr


def test_pool_worker_threads_never_inherit_a_program() -> None:
    with ThreadPoolExecutor(1) as pool:
        with agentrt.program():
            pool.submit(lambda: None).result()  # the worker thread is created here
        assert pool.submit(agentrt.current_program).result() is None
