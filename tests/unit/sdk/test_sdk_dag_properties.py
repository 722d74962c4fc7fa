"""Property tests of the fork/parent DAG bookkeeping, against a model of the program.

Hypothesis draws random agent programs (calls, tools, forks through threads,
thread pools, asyncio tasks, parallel blocks, nested sub-programs), runs them
for real through agentrt.OpenAI / AsyncOpenAI, and compares what the server
saw with a sequential model: every call's parent is exactly what the model
says, and with threads and pools so is its thread. Under asyncio a task
started since its owner's last call continues the owner's thread while it
runs (a step in a task of its own), and whoever uses that thread meanwhile
forks, so threads and parents depend on how tasks interleave. There the check
is that continuing never loses a dependency (the modelled parent of every call
is its parent or an ancestor of it) and that no thread holds two calls with
the same parent, so that no thread mixes the calls of concurrent branches.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Union

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.sdk.recording import RecordingServer, aask, ask

import agentrt


@dataclass(frozen=True)
class Call:
    label: str = ""


@dataclass(frozen=True)
class Tool:
    pass


@dataclass(frozen=True)
class Nested:
    """A nested (joined) sub-program running the same thread."""

    body: tuple[Op, ...]


@dataclass(frozen=True)
class Fork:
    kind: str  # thread | pool | task | spawn
    body: tuple[Op, ...]


@dataclass(frozen=True)
class Parallel:
    calls: int
    labels: tuple[str, ...] = ()


Op = Union[Call, Tool, Nested, Fork, Parallel]  # noqa: UP007


def scripts(fork_kinds: list[str]) -> st.SearchStrategy[tuple[Op, ...]]:
    leaf = st.one_of(
        st.just(Call()), st.just(Call()), st.just(Tool()), st.builds(Parallel, st.integers(0, 3))
    )

    def extend(children: st.SearchStrategy[Op]) -> st.SearchStrategy[Op]:
        body = st.lists(children, max_size=4).map(tuple)
        return st.one_of(
            st.builds(Fork, st.sampled_from(fork_kinds), body),
            st.builds(Nested, body),
        )

    op = st.recursive(leaf, extend, max_leaves=12)
    return st.lists(op, min_size=1, max_size=6).map(lambda ops: labelled(tuple(ops)))


def labelled(script: tuple[Op, ...]) -> tuple[Op, ...]:
    """Name every call c0, c1, ... in program order (depth first), which the model also follows."""
    counter = itertools.count()

    def walk(body: tuple[Op, ...]) -> tuple[Op, ...]:
        out: list[Op] = []
        for op in body:
            if isinstance(op, Call):
                out.append(Call(f"c{next(counter)}"))
            elif isinstance(op, Parallel):
                out.append(Parallel(op.calls, tuple(f"c{next(counter)}" for _ in range(op.calls))))
            elif isinstance(op, Nested):
                out.append(Nested(walk(op.body)))
            elif isinstance(op, Fork):
                out.append(Fork(op.kind, walk(op.body)))
            else:
                out.append(op)
        return tuple(out)

    return walk(script)


@dataclass(frozen=True)
class Expected:
    label: str
    thread: str
    parent: str | None  # label of the parent call


def model(script: tuple[Op, ...]) -> list[Expected]:
    """The calls a program running `script` makes: label, thread, parent (sequential semantics)."""
    out: list[Expected] = []
    threads = itertools.count(1)

    def run(body: tuple[Op, ...], thread: str, last: str | None) -> str | None:
        for op in body:
            if isinstance(op, Call):
                out.append(Expected(op.label, thread, last))
                last = op.label
            elif isinstance(op, Nested):
                last = run(op.body, thread, last)
            elif isinstance(op, Fork):
                run(op.body, str(next(threads)), last)
            elif isinstance(op, Parallel):
                for label in op.labels:
                    out.append(Expected(label, str(next(threads)), last))
                last = op.labels[-1] if op.labels else last
        return last

    run(script, "0", None)
    return out


def execute_sync(script: tuple[Op, ...], client: agentrt.OpenAI) -> None:

    @agentrt.tool
    def tool() -> None:
        pass

    def run(body: tuple[Op, ...]) -> None:
        for op in body:
            if isinstance(op, Call):
                ask(client, op.label)
            elif isinstance(op, Tool):
                tool()
            elif isinstance(op, Nested):
                agentrt.program(run)(op.body)
            elif isinstance(op, Fork):
                # The model numbers a fork's thread when it starts: touch the SDK first thing.
                def forked(b: tuple[Op, ...] = op.body) -> None:
                    agentrt.current_program()
                    run(b)

                if op.kind == "thread":
                    t = threading.Thread(target=forked)
                    t.start()
                    t.join()
                else:
                    # A pool per fork: nested forks must not wait on a pool they occupy.
                    with ThreadPoolExecutor(max_workers=1) as pool:
                        pool.submit(forked).result()
            elif isinstance(op, Parallel):
                with agentrt.parallel():
                    for label in op.labels:
                        ask(client, label)

    with agentrt.program():
        run(script)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts(["thread", "pool"]))
def test_threads_pools_and_parallel_blocks_build_exactly_the_modelled_dag(
    script: tuple[Op, ...],
) -> None:
    server = RecordingServer()
    client = server.sync_client()
    execute_sync(script, client)
    check(server, model(script), exact_threads=True)


async def execute_async(script: tuple[Op, ...], client: agentrt.AsyncOpenAI) -> None:
    @agentrt.tool
    async def tool() -> None:
        await asyncio.sleep(0)

    async def run(body: tuple[Op, ...]) -> None:
        spawned: list[asyncio.Task[None]] = []
        for op in body:
            if isinstance(op, Call):
                await aask(client, op.label)
            elif isinstance(op, Tool):
                await tool()
            elif isinstance(op, Nested):
                await agentrt.program(run)(op.body)
            elif isinstance(op, Fork):
                task = asyncio.create_task(run(op.body))
                if op.kind == "task":
                    await task
                else:  # spawn: the parent carries on; the task is awaited at the end of the body
                    spawned.append(task)
            elif isinstance(op, Parallel):
                with agentrt.parallel():
                    streams = [
                        await client.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": label}], stream=True
                        )
                        for label in op.labels
                    ]
                for stream in streams:
                    async for _ in stream:
                        pass
        for task in spawned:
            await task

    async with agentrt.program():
        await run(script)


def check(server: RecordingServer, expected: list[Expected], *, exact_threads: bool) -> None:
    calls = server.calls()
    seen = {c.prompt: c for c in calls}
    assert sorted(seen) == sorted(e.label for e in expected)
    programs = {c.program for c in seen.values()}
    assert len(programs) <= 1
    parent_of = {c.call: c.parent for c in calls}
    for e in expected:
        call = seen[e.label]
        modelled = seen[e.parent].call if e.parent else None
        if exact_threads:
            assert call.parent == modelled, e
            assert call.thread == e.thread, e
        elif modelled is not None:
            ancestor = call.parent
            while ancestor is not None and ancestor != modelled:
                ancestor = parent_of[ancestor]
            assert ancestor == modelled, e
    if not exact_threads:
        pairs = [(c.thread, c.parent) for c in calls]
        assert len(set(pairs)) == len(pairs), pairs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts(["task", "spawn"]))
def test_asyncio_tasks_follow_the_call_made_before_they_were_created(
    script: tuple[Op, ...],
) -> None:
    server = RecordingServer()

    async def main() -> None:
        await execute_async(script, server.async_client())

    asyncio.run(main())
    check(server, model(script), exact_threads=False)
