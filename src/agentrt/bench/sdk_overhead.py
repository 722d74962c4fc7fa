"""``agentrt bench sdk``: what the SDK adds to each LLM call (context lookup, fork check, headers).

Measures, in one process and one command:

- the per-call hook of ``agentrt.OpenAI`` (and of every openai client after
  ``agentrt.instrument()``, which runs the same code), in a tight loop with
  openai's own request left out: outside any program (a ContextVar lookup)
  and inside one (fork check, a fresh call id, the interrupt since the
  previous call's end, the headers, the copy of the request options, the
  "already announced?" check, noting the call's end); and the first call of
  a new thread of a program (the lazy fork);
- whole calls through one ``openai.OpenAI`` client after
  ``agentrt.instrument()``, against an in-memory transport, in many short
  rounds. Each round runs every variant for ``--round-calls`` calls, in an
  order that rotates from round to round, timed in this process's CPU time,
  so that load on the machine and its drift hit all variants alike. The
  variants are the same client and class throughout (nothing is patched or
  unpatched between rounds, which would throw away the interpreter's
  specialised code and bill that to whichever variant runs next):

  * *plain*: outside any program (the instrumentation only looks up the
    program, finds none and hands over to openai);
  * *by hand*: outside any program, sending by hand exactly the headers an
    instrumented call sends (what carrying them costs inside openai and httpx);
  * *instrumented*: inside a program;
  * *probed*: instrumented calls, and plain ones for calibration, with a
    clock read on entry to and exit from agentrt's request hook and around
    openai's request that it hands over to.

  Each difference is computed within a round and summarised over the rounds
  by its median and its interquartile range (``p25..p75``).

**agentrt's own work per instrumented call**, the figure the < 20 µs target
is about, is the time spent in agentrt's code on the call's path, measured
in situ by the probes: the time inside the request hook less the time inside
openai's request, for instrumented calls, less the same for plain calls
(which removes the probes' own cost; what remains of the plain calls'
hook, the program lookup, is the "hook per call outside a program" figure).
It does not count what openai and httpx do with the headers once they have
them (the "by hand" difference), nor openai's own work on the call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from contextvars import Context, copy_context
from typing import Any, cast

TARGET_US = 20.0
VARIANTS = ("plain", "by_hand", "instrumented", "probed_plain", "probed_instrumented")
_WARMUP_ROUNDS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=20_000, help="hook invocations per loop run")
    parser.add_argument("--repeat", type=int, default=5, help="hook loop runs (median reported)")
    parser.add_argument(
        "--rounds", type=int, default=60, help="rounds of whole client calls (each variant each)"
    )
    parser.add_argument(
        "--round-calls", type=int, default=10, help="whole client calls per variant per round"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")


def _per_call_us(fn: Callable[[], object], calls: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter_ns() - start) / calls / 1000.0)
    return statistics.median(runs)


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


def _spread(values: list[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q1, q3


class _Probes:
    """Clock reads around agentrt's request hook and around openai's request inside it."""

    def __init__(self) -> None:
        self.outer_ns = 0
        self.inner_ns = 0

    def wrap_client(self, client: Any) -> None:
        hook = type(client).request  # agentrt's hook, which openai's post() calls
        clock = time.perf_counter_ns

        def request(
            cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
        ) -> Any:
            start = clock()
            try:
                return hook(client, cast_to, options, stream=stream, stream_cls=stream_cls)
            finally:
                self.outer_ns += clock() - start

        # An instance attribute: the class (shared by the other variants) stays as it is.
        client.request = request

    def send(self, original: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter_ns

        def send(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.inner_ns += clock() - start

        return send

    def take(self) -> int:
        own = self.outer_ns - self.inner_ns
        self.outer_ns = self.inner_ns = 0
        return own


def measure(calls: int, repeat: int, rounds: int, round_calls: int) -> dict[str, float]:
    import httpx
    import openai
    from openai._models import FinalRequestOptions

    import agentrt
    from agentrt.sdk import openai_clients
    from agentrt.sdk.context import begin_call, peek

    options = FinalRequestOptions.construct(
        method="post", url="/chat/completions", json_data={"model": "bench", "messages": []}
    )

    def make_client() -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://bench.local/v1",
            api_key="bench",
            max_retries=0,
            # openai accepts httpx clients as well as its own httpx2 ones.
            http_client=cast(Any, httpx.Client(transport=httpx.MockTransport(_chat_response))),
        )

    ours = agentrt.OpenAI(
        base_url="http://bench.local/v1",
        api_key="bench",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(_chat_response)),
    )

    def send(cast_to: Any, options: Any, *, stream: bool, stream_cls: Any) -> object:
        return options

    def hook() -> None:
        # Exactly what agentrt.OpenAI.request (and an instrumented openai client) does
        # around handing over to openai, with openai's own work left out.
        if peek() is not None:
            openai_clients.sync_request(ours, send, object, options, False, None)

    results: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    results["hook_outside_us"] = _per_call_us(hook, calls, repeat)

    was_installed = openai_clients.is_installed()
    openai_clients.install()
    try:
        with agentrt.program("bench"):
            hook()  # the one-off announcement is not part of the per-call cost
            results["hook_inside_us"] = _per_call_us(hook, calls, repeat)
            results["begin_call_us"] = _per_call_us(begin_call, calls, repeat)
            results["fork_and_call_us"] = _fork_and_call_us(begin_call, calls, repeat)
            program = copy_context()  # run in this thread, it continues the program's thread
            results.update(_whole_calls(program, make_client, openai_clients, rounds, round_calls))
    finally:
        if not was_installed:
            openai_clients.uninstall()
    results["load_average_before"] = load_before
    results["load_average_after"] = os.getloadavg()[0]
    return results


def _fork_and_call_us(begin_call: Callable[[], object], calls: int, repeat: int) -> float:
    """First call of a new program thread: each run of a copied context in another OS thread
    is a fork (new strand, new thread id), then a call."""
    fork_runs: list[float] = []
    n = max(calls // 10, 1)

    def forks() -> None:
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(n):
                copy_context().run(begin_call)
            fork_runs.append((time.perf_counter_ns() - start) / n / 1000.0)

    worker = threading.Thread(target=copy_context().run, args=(forks,))
    worker.start()
    worker.join()
    return statistics.median(fork_runs)


def _whole_calls(
    program: Context,
    make_client: Callable[[], Any],
    openai_clients: Any,
    rounds: int,
    round_calls: int,
) -> dict[str, float]:
    client, probed = make_client(), make_client()
    probes = _Probes()
    probes.wrap_client(probed)
    outside = Context()  # no program in it

    def call(target: Any, headers: dict[str, str] | None = None) -> object:
        return target.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "x"}], extra_headers=headers
        )

    # The headers of an instrumented call in the middle of a thread (parent call and
    # interrupt included), for the calls that send them by hand.
    program.run(call, client)
    program.run(call, client)
    headers = dict(_last_program_headers)

    def cpu_us(context: Context, target: Any, sent: dict[str, str] | None) -> float:
        start = time.process_time_ns()
        for _ in range(round_calls):
            context.run(call, target, sent)
        return (time.process_time_ns() - start) / round_calls / 1000.0

    def probed_us(context: Context) -> float:
        original = openai_clients._sync_send
        openai_clients._sync_send = probes.send(original)
        try:
            probes.take()
            for _ in range(round_calls):
                context.run(call, probed, None)
            return probes.take() / round_calls / 1000.0
        finally:
            openai_clients._sync_send = original

    run: dict[str, Callable[[], float]] = {
        "plain": lambda: cpu_us(outside, client, None),
        "by_hand": lambda: cpu_us(outside, client, headers),
        "instrumented": lambda: cpu_us(program, client, None),
        "probed_plain": lambda: probed_us(outside),
        "probed_instrumented": lambda: probed_us(program),
    }
    runs: dict[str, list[float]] = {kind: [] for kind in VARIANTS}
    for i in range(_WARMUP_ROUNDS + rounds):
        shift = i % len(VARIANTS)
        for kind in VARIANTS[shift:] + VARIANTS[:shift]:
            value = run[kind]()
            if i >= _WARMUP_ROUNDS:
                runs[kind].append(value)

    def paired(a: str, b: str) -> list[float]:
        return [x - y for x, y in zip(runs[a], runs[b], strict=True)]

    out: dict[str, float] = {
        "bare_openai_call_us": statistics.median(runs["plain"]),
        "headers_by_hand_call_us": statistics.median(runs["by_hand"]),
        "instrumented_openai_call_us": statistics.median(runs["instrumented"]),
        "client_ratio": statistics.median(
            i / p for i, p in zip(runs["instrumented"], runs["plain"], strict=True)
        ),
    }
    for key, values in (
        ("header_transport_us", paired("by_hand", "plain")),
        ("instrument_overhead_us", paired("instrumented", "plain")),
        ("instrument_beyond_headers_us", paired("instrumented", "by_hand")),
        ("instrument_own_us", paired("probed_instrumented", "probed_plain")),
    ):
        out[key], out[f"{key}_p25"], out[f"{key}_p75"] = _spread(values)
    return out


def _table(results: dict[str, float]) -> str:
    def spread(key: str) -> str:
        return f"[{results[f'{key}_p25']:.1f}..{results[f'{key}_p75']:.1f}]"

    rows: list[tuple[str, float, str]] = [
        ("SDK hook per call, outside a program (baseline)", results["hook_outside_us"], "µs"),
        ("SDK hook per call, inside a program", results["hook_inside_us"], "µs"),
        ("  of which context lookup + call id + headers", results["begin_call_us"], "µs"),
        ("first call of a new program thread (fork + call)", results["fork_and_call_us"], "µs"),
        ("openai.OpenAI call, plain (CPU time)", results["bare_openai_call_us"], "µs"),
        ("  the same, sending the program headers by hand", results["headers_by_hand_call_us"], "µs"),
        ("  the same, instrumented, inside a program", results["instrumented_openai_call_us"], "µs"),
        ("  ratio instrumented / plain", results["client_ratio"], "x"),
        ("added by carrying the headers (openai + httpx)", results["header_transport_us"], "µs"),
        ("added by agentrt.instrument() in all", results["instrument_overhead_us"], "µs"),
        ("  of which beyond carrying the headers", results["instrument_beyond_headers_us"], "µs"),
        ("agentrt's own work per instrumented call", results["instrument_own_us"], "µs"),
    ]  # fmt: skip
    spreads = {
        "added by carrying the headers (openai + httpx)": spread("header_transport_us"),
        "added by agentrt.instrument() in all": spread("instrument_overhead_us"),
        "  of which beyond carrying the headers": spread("instrument_beyond_headers_us"),
        "agentrt's own work per instrumented call": spread("instrument_own_us"),
    }
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure'.ljust(width)}  {'value':>10}  p25..p75", "-" * (width + 24)]
    lines += [
        f"{name.ljust(width)}  {value:>9.2f} {unit}  {spreads.get(name, '')}".rstrip()
        for name, value, unit in rows
    ]
    lines.append(
        "whole calls: medians over rounds; differences: median of the per-round differences"
    )
    lines.append(
        f"load average: {results['load_average_before']:.2f} before, "
        f"{results['load_average_after']:.2f} after"
    )
    verdict = "meets" if results["hook_inside_us"] < TARGET_US else "MISSES"
    lines.append(f"target: < {TARGET_US:.0f} µs per call inside a program: {verdict}")
    verdict = "meets" if results["instrument_own_us_p75"] < TARGET_US else "MISSES"
    lines.append(
        f"target: < {TARGET_US:.0f} µs of agentrt's own work per instrumented call "
        f"(its 75th percentile over rounds): {verdict}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if min(args.repeat, args.rounds, args.round_calls) < 1 or args.calls < 10:
        raise SystemExit("--calls (>= 10), --repeat, --rounds and --round-calls must be positive")
    results = measure(args.calls, args.repeat, args.rounds, args.round_calls)
    print(_table(results))
    if args.json:
        payload = {
            "benchmark": "sdk",
            "unit": "microseconds per call",
            "calls": args.calls,
            "repeat": args.repeat,
            "rounds": args.rounds,
            "round_calls": args.round_calls,
            "target_us": TARGET_US,
            "results": results,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    return 0
