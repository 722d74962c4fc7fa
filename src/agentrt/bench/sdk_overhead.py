"""``agentrt bench sdk``: what the SDK adds to each LLM call (context lookup, fork check, headers).

Measures, in one process and one command:

- the per-call hook of ``agentrt.OpenAI`` (and of every openai client after
  ``agentrt.instrument()``, which runs the same code) outside any program (the
  baseline: a ContextVar lookup) and inside one (fork check, a fresh call id,
  the interrupt since the previous call's end, the headers, the copy of the
  request options, the "already announced?" check, noting the call's end);
- the first call of a new thread of a program (the lazy fork);
- whole calls through ``openai.OpenAI`` and through ``agentrt.OpenAI`` inside a
  program, against an in-memory transport, and their ratio;
- whole calls through one ``openai.OpenAI`` with and without
  ``agentrt.instrument()``, runs alternating in the same process: the
  instrumentation's cost per call, the median of the paired differences.

Each figure is the median over ``--repeat`` runs of the per-call mean. Prints a
table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from contextvars import copy_context
from typing import Any, cast

TARGET_US = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=20_000, help="hook invocations per run")
    parser.add_argument("--client-calls", type=int, default=300, help="whole client calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median reported)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")


def _per_call_us(fn: Callable[[], object], calls: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter_ns() - start) / calls / 1000.0)
    return statistics.median(runs)


def _per_call_cpu_us(fn: Callable[[], object], calls: int) -> float:
    start = time.process_time_ns()
    for _ in range(calls):
        fn()
    return (time.process_time_ns() - start) / calls / 1000.0


# The program headers of the latest request the in-memory server saw.
_last_program_headers: dict[str, str] = {}


def _chat_response(request: Any) -> Any:
    import httpx

    from agentrt.protocol.headers import ALL_HEADERS

    seen = {k: v for k, v in request.headers.items() if k in ALL_HEADERS}
    if seen:
        _last_program_headers.clear()
        _last_program_headers.update(seen)

    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ok"},
                }
            ],
        },
    )


def measure(calls: int, client_calls: int, repeat: int) -> dict[str, float]:
    import httpx
    import openai
    from openai._models import FinalRequestOptions

    import agentrt
    from agentrt.sdk import openai_clients
    from agentrt.sdk.context import begin_call, peek

    options = FinalRequestOptions.construct(
        method="post", url="/chat/completions", json_data={"model": "bench", "messages": []}
    )
    ours = agentrt.OpenAI(
        base_url="http://bench.local/v1",
        api_key="bench",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(_chat_response)),
    )
    plain = openai.OpenAI(
        base_url="http://bench.local/v1",
        api_key="bench",
        max_retries=0,
        # openai accepts httpx clients as well as its own httpx2 ones.
        http_client=cast(Any, httpx.Client(transport=httpx.MockTransport(_chat_response))),
    )

    def send(cast_to: Any, options: Any, *, stream: bool, stream_cls: Any) -> object:
        return options

    def hook() -> None:
        # Exactly what agentrt.OpenAI.request (and an instrumented openai client) does
        # around handing over to openai, with openai's own work left out.
        if peek() is not None:
            openai_clients.sync_request(ours, send, object, options, False, None)

    def whole_call(
        client: openai.OpenAI, headers: dict[str, str] | None = None
    ) -> Callable[[], object]:
        def call() -> object:
            return client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": "x"}], extra_headers=headers
            )

        return call

    results: dict[str, float] = {}
    results["hook_outside_us"] = _per_call_us(hook, calls, repeat)

    with agentrt.program("bench"):
        hook()  # the one-off announcement is not part of the per-call cost
        results["hook_inside_us"] = _per_call_us(hook, calls, repeat)
        results["begin_call_us"] = _per_call_us(begin_call, calls, repeat)
        # Whole calls: runs of the two clients alternate, so that load on the machine
        # hits both alike; the ratio is the median of the per-pair ratios.
        plain_runs, ours_runs = [], []
        for _ in range(repeat):
            plain_runs.append(_per_call_us(whole_call(plain), client_calls, 1))
            ours_runs.append(_per_call_us(whole_call(ours), client_calls, 1))
        results["plain_client_call_us"] = statistics.median(plain_runs)
        results["agentrt_client_call_us"] = statistics.median(ours_runs)
        results["client_ratio"] = statistics.median(
            o / p for o, p in zip(ours_runs, plain_runs, strict=True)
        )
        # The same openai.OpenAI client: uninstrumented; uninstrumented but sending the same
        # program headers by hand (what carrying them costs inside openai and httpx); and
        # after agentrt.instrument(). Many short runs in rotating order, timed in this
        # process's CPU time, so that other load on the machine and its drift cancel; each
        # figure is the median over the rounds, each difference the median of the rounds'.
        was_installed = openai_clients.is_installed()
        # By hand: exactly the headers an instrumented call sends (one in the middle of a
        # thread: parent call and interrupt included).
        openai_clients.install()
        whole_call(plain)()
        whole_call(plain)()
        headers = dict(_last_program_headers)
        runs: dict[str, list[float]] = {"bare": [], "by_hand": [], "instrumented": []}
        pair_calls = max(client_calls // 10, 1)
        order = list(runs)
        try:
            for i in range(repeat * 10):
                for kind in order[i % 3 :] + order[: i % 3]:
                    if kind == "instrumented":
                        openai_clients.install()
                    else:
                        openai_clients.uninstall()
                    call = whole_call(plain, headers if kind == "by_hand" else None)
                    runs[kind].append(_per_call_cpu_us(call, pair_calls))
        finally:
            if was_installed:
                openai_clients.install()
            else:
                openai_clients.uninstall()
        results["bare_openai_call_us"] = statistics.median(runs["bare"])
        results["headers_by_hand_call_us"] = statistics.median(runs["by_hand"])
        results["instrumented_openai_call_us"] = statistics.median(runs["instrumented"])
        results["header_transport_us"] = statistics.median(
            h - b for h, b in zip(runs["by_hand"], runs["bare"], strict=True)
        )
        results["instrument_overhead_us"] = statistics.median(
            i - b for i, b in zip(runs["instrumented"], runs["bare"], strict=True)
        )
        results["instrument_own_us"] = statistics.median(
            i - h for i, h in zip(runs["instrumented"], runs["by_hand"], strict=True)
        )
        # First call of a new program thread: each run of a copied context in another
        # OS thread is a fork (new strand, new thread id), then a call.
        fork_runs: list[float] = []

        def forks() -> None:
            for _ in range(repeat):
                start = time.perf_counter_ns()
                for _ in range(calls // 10):
                    copy_context().run(begin_call)
                fork_runs.append((time.perf_counter_ns() - start) / (calls // 10) / 1000.0)

        parent_ctx = copy_context()
        worker = threading.Thread(target=parent_ctx.run, args=(forks,))
        worker.start()
        worker.join()
        results["fork_and_call_us"] = statistics.median(fork_runs)

    results["client_overhead_us"] = (
        results["agentrt_client_call_us"] - results["plain_client_call_us"]
    )
    return results


def _table(results: dict[str, float]) -> str:
    rows = [
        ("SDK hook per call, outside a program (baseline)", results["hook_outside_us"], "µs"),
        ("SDK hook per call, inside a program", results["hook_inside_us"], "µs"),
        ("  of which context lookup + call id + headers", results["begin_call_us"], "µs"),
        ("first call of a new program thread (fork + call)", results["fork_and_call_us"], "µs"),
        ("openai.OpenAI call, in-memory transport", results["plain_client_call_us"], "µs"),
        (
            "agentrt.OpenAI call inside a program, same transport",
            results["agentrt_client_call_us"],
            "µs",
        ),
        ("  difference", results["client_overhead_us"], "µs"),
        ("  ratio agentrt / openai", results["client_ratio"], "x"),
        ("openai.OpenAI call, not instrumented (CPU time)", results["bare_openai_call_us"], "µs"),
        (
            "  the same, sending the program headers by hand",
            results["headers_by_hand_call_us"],
            "µs",
        ),
        (
            "  the same, after agentrt.instrument(), inside a program",
            results["instrumented_openai_call_us"],
            "µs",
        ),
        ("  added by carrying the headers (openai + httpx)", results["header_transport_us"], "µs"),
        ("  added by agentrt.instrument() in all", results["instrument_overhead_us"], "µs"),
        ("    of which agentrt's own work", results["instrument_own_us"], "µs"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure'.ljust(width)}  {'value':>10}", "-" * (width + 12)]
    lines += [f"{name.ljust(width)}  {value:>9.2f} {unit}" for name, value, unit in rows]
    verdict = "meets" if results["hook_inside_us"] < TARGET_US else "MISSES"
    lines.append(f"target: < {TARGET_US:.0f} µs per call inside a program: {verdict}")
    verdict = "meets" if results["instrument_own_us"] < TARGET_US else "MISSES"
    lines.append(
        f"target: < {TARGET_US:.0f} µs of agentrt's own work per instrumented call: {verdict}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if min(args.calls, args.client_calls, args.repeat) < 1 or args.calls < 10:
        raise SystemExit("--calls (>= 10), --client-calls and --repeat must be positive")
    results = measure(args.calls, args.client_calls, args.repeat)
    print(_table(results))
    if args.json:
        payload = {
            "benchmark": "sdk",
            "unit": "microseconds per call",
            "calls": args.calls,
            "client_calls": args.client_calls,
            "repeat": args.repeat,
            "target_us": TARGET_US,
            "results": results,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    return 0
