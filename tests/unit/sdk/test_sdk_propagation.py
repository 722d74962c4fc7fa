"""The program context follows the code: threads, pools, tasks, anyio, tools, sub-programs.

Each test fans out from a program and asserts the exact program, thread and
parent ids the server sees: a thread started inside a program is a new thread
of it, whose first call follows the call made before the fork. An asyncio
task started since its owner's last call continues the owner's thread while
it runs (a step in a task of its own); tasks running alongside it fork.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
from tests.unit.sdk.recording import RecordingServer, Seen, aask, ask

import agentrt
from agentrt.protocol import headers as h


def by_prompt(calls: list[Seen]) -> dict[str, Seen]:
    return {c.prompt: c for c in calls}


def assert_branches(
    calls: dict[str, Seen],
    names: list[str],
    fork_point: str | None,
    program: str,
    continued: str | None = None,
) -> None:
    """Each name is a branch making calls `name-1`, `name-2`, forked after `fork_point`.

    ``continued``: the branch that continues the main thread "0" (the first task of a
    gather to run); the others are new threads 1, 2, ...
    """
    threads = set()
    for name in names:
        first, second = calls[f"{name}-1"], calls[f"{name}-2"]
        assert first.program == second.program == program
        assert first.thread == second.thread
        assert first.parent == fork_point
        assert second.parent == first.call
        if name == continued:
            assert first.thread == "0"
        else:
            threads.add(first.thread)
    forked = len(names) - (continued is not None)
    assert threads == {str(i) for i in range(1, forked + 1)}


def branch(client: agentrt.OpenAI, name: str) -> str:
    ask(client, f"{name}-1")
    ask(client, f"{name}-2")
    return agentrt.current_program().thread_id  # type: ignore[union-attr]


async def abranch(client: agentrt.AsyncOpenAI, name: str) -> None:
    await aask(client, f"{name}-1")
    await aask(client, f"{name}-2")


def test_threading_threads_are_new_threads_of_the_program(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx:
        ask(client, "before")
        workers = [threading.Thread(target=branch, args=(client, f"t{i}")) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        ask(client, "after")
    calls = by_prompt(server.calls())
    before = calls["before"]
    assert_branches(calls, [f"t{i}" for i in range(4)], before.call, ctx.program_id)
    assert calls["after"].thread == "0" and calls["after"].parent == before.call


def test_thread_subclasses_overriding_run_are_covered(server: RecordingServer) -> None:
    client = server.sync_client()

    class Worker(threading.Thread):
        def run(self) -> None:
            branch(client, "sub")

    with agentrt.program() as ctx:
        ask(client, "before")
        w = Worker()
        w.start()
        w.join()
    calls = by_prompt(server.calls())
    assert_branches(calls, ["sub"], calls["before"].call, ctx.program_id)


def test_pool_submit_gives_each_task_its_own_thread(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx, ThreadPoolExecutor(max_workers=2) as pool:
        ask(client, "before")
        futures = [pool.submit(branch, client, f"s{i}") for i in range(5)]
        threads = [f.result() for f in futures]
    calls = by_prompt(server.calls())
    assert_branches(calls, [f"s{i}" for i in range(5)], calls["before"].call, ctx.program_id)
    # Two OS threads ran five tasks: each task is still its own program thread.
    assert len(set(threads)) == 5


def test_pool_map_gives_each_item_its_own_thread(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx, ThreadPoolExecutor(max_workers=3) as pool:
        ask(client, "before")
        list(pool.map(lambda name: branch(client, name), [f"m{i}" for i in range(6)]))
    calls = by_prompt(server.calls())
    assert_branches(calls, [f"m{i}" for i in range(6)], calls["before"].call, ctx.program_id)


def test_a_pool_reused_across_programs_never_leaks_one_into_the_next(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    with ThreadPoolExecutor(max_workers=1) as pool:
        with agentrt.program() as one:
            pool.submit(ask, client, "one").result()
        outside = pool.submit(agentrt.current_program).result()
        with agentrt.program() as two:
            pool.submit(ask, client, "two").result()
    calls = by_prompt(server.calls())
    assert calls["one"].program == one.program_id
    assert calls["two"].program == two.program_id
    assert outside is None


async def test_run_in_executor_and_asyncio_to_thread_follow_the_program(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    loop = asyncio.get_running_loop()
    async with agentrt.program() as ctx:
        await asyncio.to_thread(ask, client, "before")
        await asyncio.gather(
            loop.run_in_executor(None, branch, client, "e0"),
            asyncio.to_thread(branch, client, "e1"),
        )
    calls = by_prompt(server.calls())
    before = calls["before"]
    # to_thread itself ran in a new program thread (1); e0 and e1 fork from the main thread.
    assert before.thread == "1" and before.parent is None
    for name in ("e0", "e1"):
        assert calls[f"{name}-1"].program == ctx.program_id
        assert calls[f"{name}-1"].parent is None
        assert calls[f"{name}-2"].parent == calls[f"{name}-1"].call
    # Each worker is its own thread of the program (gather's wrapper task around
    # to_thread is one too, so the numbers are not consecutive).
    threads = {calls["e0-1"].thread, calls["e1-1"].thread}
    assert len(threads) == 2 and not threads & {"0", "1"}


async def test_asyncio_gather_branches_are_threads_of_the_program(server: RecordingServer) -> None:
    client = server.async_client()
    async with agentrt.program() as ctx:
        await aask(client, "before")
        await asyncio.gather(*(abranch(client, f"g{i}") for i in range(3)))
        await aask(client, "after")
    calls = by_prompt(server.calls())
    before = calls["before"]
    assert_branches(calls, ["g0", "g1", "g2"], before.call, ctx.program_id, continued="g0")
    # The main thread goes on after the branch that continued it.
    assert calls["after"].thread == "0" and calls["after"].parent == calls["g0-2"].call


async def test_steps_in_fresh_tasks_continue_the_thread(server: RecordingServer) -> None:
    client = server.async_client()
    async with agentrt.program():
        await aask(client, "before")
        await asyncio.create_task(abranch(client, "step"))
        await asyncio.create_task(aask(client, "next"))
        await aask(client, "after")
    calls = server.calls()
    assert [c.prompt for c in calls] == ["before", "step-1", "step-2", "next", "after"]
    assert {c.thread for c in calls} == {"0"}
    assert [c.parent for c in calls] == [None] + [c.call for c in calls[:-1]]


async def test_the_owner_forks_when_it_calls_while_a_task_continues_its_thread(
    server: RecordingServer,
) -> None:
    client = server.async_client()
    async with agentrt.program():
        await aask(client, "before")
        task = asyncio.create_task(abranch(client, "bg"))
        await asyncio.sleep(0)  # the task starts and takes the thread over
        await aask(client, "meanwhile")
        await task
    calls = by_prompt(server.calls())
    assert calls["bg-1"].thread == "0" and calls["bg-1"].parent == calls["before"].call
    assert calls["meanwhile"].thread == "1"
    assert calls["meanwhile"].parent == calls["before"].call


async def test_a_task_forks_after_the_call_made_before_it_was_created(
    server: RecordingServer,
) -> None:
    client = server.async_client()
    async with agentrt.program():
        await aask(client, "c0")
        task = asyncio.create_task(aask(client, "child"))
        await aask(client, "c1")  # the parent moves on before the child runs
        await task
    calls = by_prompt(server.calls())
    assert calls["child"].parent == calls["c0"].call
    assert calls["c1"].parent == calls["c0"].call


async def test_anyio_task_groups_follow_the_program(server: RecordingServer) -> None:
    aclient = server.async_client()
    async with agentrt.program() as ctx:
        await aask(aclient, "before")
        async with anyio.create_task_group() as tg:
            tg.start_soon(abranch, aclient, "tg0")
            tg.start_soon(abranch, aclient, "tg1")
    calls = by_prompt(server.calls())
    assert_branches(calls, ["tg0", "tg1"], calls["before"].call, ctx.program_id, continued="tg0")


async def test_anyio_to_thread_is_a_new_thread(server: RecordingServer) -> None:
    aclient = server.async_client()
    client = server.sync_client()
    async with agentrt.program() as ctx:
        await aask(aclient, "before")
        await anyio.to_thread.run_sync(branch, client, "thr")
    calls = by_prompt(server.calls())
    assert_branches(calls, ["thr"], calls["before"].call, ctx.program_id)


def test_asyncio_run_inside_a_sync_program_continues_its_main_thread(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    aclient = server.async_client()

    async def amain() -> None:
        await aask(aclient, "inside")
        await asyncio.gather(abranch(aclient, "x"), abranch(aclient, "y"))

    with agentrt.program() as ctx:
        ask(client, "before")
        asyncio.run(amain())
        ask(client, "after")
    calls = by_prompt(server.calls())
    inside = calls["inside"]
    assert inside.thread == "0" and inside.parent == calls["before"].call
    assert_branches(calls, ["x", "y"], inside.call, ctx.program_id, continued="x")
    assert calls["after"].thread == "0" and calls["after"].parent == calls["x-2"].call


def test_tools_run_in_the_calling_thread_and_report_their_time(server: RecordingServer) -> None:
    client = server.sync_client()

    @agentrt.tool
    def search(query: str) -> str:
        ask(client, f"tool:{query}")
        threading.Event().wait(0.02)
        return "found"

    with agentrt.program():
        ask(client, "before")
        assert search("q") == "found"
        ask(client, "after")
        ask(client, "later")
    calls = by_prompt(server.calls())
    assert calls["tool:q"].thread == "0"
    assert calls["tool:q"].parent == calls["before"].call
    assert calls["after"].parent == calls["tool:q"].call
    assert h.INTERRUPT not in calls["before"].headers
    assert float(calls["after"].headers[h.INTERRUPT]) >= 0.02
    # Tool time is handed over once: the next call reports only the gap since "after".
    assert float(calls["later"].headers[h.INTERRUPT]) < 0.02


async def test_async_tools_report_their_time_on_the_next_call(server: RecordingServer) -> None:
    client = server.async_client()

    @agentrt.tool
    async def fetch() -> int:
        await asyncio.sleep(0.02)
        return 1

    async with agentrt.program():
        assert await fetch() == 1
        await aask(client, "next")
    (call,) = server.calls()
    assert float(call.headers[h.INTERRUPT]) >= 0.02


def test_tools_outside_a_program_just_run() -> None:
    @agentrt.tool
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert add.__name__ == "add"


def test_generators_are_refused_with_a_clear_error() -> None:
    def gen() -> object:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        agentrt.program(gen)
    with pytest.raises(TypeError, match="generator"):
        agentrt.tool(gen)


def test_nested_programs_join_the_outer_program(server: RecordingServer) -> None:
    client = server.sync_client()

    @agentrt.program
    def sub_agent() -> None:
        ask(client, "sub")

    with agentrt.program("outer") as ctx:
        ask(client, "before")
        sub_agent()
        ask(client, "after")
    calls = by_prompt(server.calls())
    assert {c.program for c in calls.values()} == {ctx.program_id}
    assert calls["sub"].thread == "0" and calls["sub"].parent == calls["before"].call
    assert calls["after"].parent == calls["sub"].call
    assert calls["sub"].headers[h.PROGRAM_NAME] == "outer"
    # Only the outer program was announced and ended.
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]


def test_detached_programs_are_separate_programs(server: RecordingServer) -> None:
    client = server.sync_client()

    @agentrt.program(detached=True)
    def background() -> str:
        ask(client, "detached")
        return agentrt.current_program().program_id  # type: ignore[union-attr]

    with agentrt.program(tenant="acme") as ctx:
        ask(client, "before")
        detached_id = background()
        ask(client, "after")
    calls = by_prompt(server.calls())
    assert detached_id != ctx.program_id
    assert calls["detached"].program == detached_id
    assert calls["detached"].thread == "0" and calls["detached"].parent is None
    assert calls["after"].parent == calls["before"].call
    assert server.program_requests() == [
        ("POST", ctx.program_id),
        ("POST", detached_id),
        ("DELETE", detached_id),
        ("DELETE", ctx.program_id),
    ]
    posts = [s.body for s in server.seen if s.method == "POST" and s.path.endswith("/programs")]
    assert [p["tenant"] for p in posts] == [
        "acme",
        "acme",
    ]  # a detached program inherits the tenant


def test_parallel_makes_each_call_of_the_block_its_own_branch(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx:
        ask(client, "before")
        with agentrt.parallel():
            streams = [
                client.chat.completions.create(
                    model="test-model", messages=[{"role": "user", "content": f"p{i}"}], stream=True
                )
                for i in range(3)
            ]
            for stream in streams:
                list(stream)
        ask(client, "after")
    calls = by_prompt(server.calls())
    branches = [calls[f"p{i}"] for i in range(3)]
    assert {b.thread for b in branches} == {"1", "2", "3"}
    assert {b.parent for b in branches} == {calls["before"].call}
    assert all(b.program == ctx.program_id for b in branches)
    assert calls["after"].thread == "0" and calls["after"].parent == branches[-1].call


def test_parallel_outside_a_program_does_nothing(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.parallel():
        ask(client)
    assert server.calls()[0].headers == {}


def test_current_program_and_propagation_headers(server: RecordingServer) -> None:
    assert agentrt.current_program() is None
    assert agentrt.propagation_headers() == {}
    client = server.sync_client()
    with agentrt.program("named", tenant="t1") as ctx:
        assert ctx == agentrt.current_program()
        assert (ctx.thread_id, ctx.parent_call_id, ctx.tenant, ctx.name) == (
            "0",
            None,
            "t1",
            "named",
        )
        ask(client)
        headers = agentrt.propagation_headers()
    call = server.calls()[0]
    assert headers == {
        h.PROGRAM: ctx.program_id,
        h.SESSION: ctx.program_id,
        h.THREAD: "0",
        h.PARENT_CALL: call.call,
        h.PROGRAM_NAME: "named",
    }
    assert agentrt.current_program() is None


def test_a_program_scope_cannot_be_entered_twice_at_once() -> None:
    scope = agentrt.program("x")
    with scope, pytest.raises(RuntimeError, match="already active"), scope:
        pass
    with scope:  # reusable once it has exited
        assert agentrt.current_program() is not None


def test_the_binding_each_call_leaves_behind_has_every_slot_set() -> None:
    from agentrt.sdk import context

    strand = context.Strand(context.ProgramRecord(name="p"), "0")
    b = context.new_binding(strand)
    moved = context._moved(b, "c1")
    fresh = context.Binding(strand, b.thread_ref, b.task_ref, "c1")
    assert {s: getattr(moved, s) for s in context.Binding.__slots__} == {
        s: getattr(fresh, s) for s in context.Binding.__slots__
    }
