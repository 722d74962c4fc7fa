"""``agentrt bench engine --compare NAME=URL``: agentrt and other servers, measured alike over HTTP.

Every system, agentrt included, is measured through its OpenAI-compatible
``/v1/completions`` endpoint with streaming, so the figures are what a user
of each server sees (HTTP, tokenization and detokenization included):

- decode tokens/s at each ``--compare-streams`` concurrency (1, 8, 32): that
  many streams start together, each on its own ``--compare-prompt-len`` token
  prompt, each generating exactly ``--compare-output-len`` tokens
  (``ignore_eos``, greedy); the rate counts the tokens after each stream's
  first, over the span from the first stream's first token to the last
  stream's last token;
- time to first token for a ``--ttft-prompt-len`` token prompt, one request
  at a time, the median of ``--ttft-repeats``;
- the memory roofline fraction of each decode rate: the weight bytes one
  decode step reads (agentrt: its decoder's weights in the served dtype and
  quantization; llama.cpp: the GGUF file's tensors, found through the
  server's ``/props``) times the steps per second, over the memory read
  bandwidth measured in this command. The KV cache each step also reads is
  left out, so at many streams with long contexts the fraction understates.

All servers are up for the whole run and take turns, measurement by
measurement, so drift in the machine's background load spreads over all of
them. Every prompt starts with its own request number, so no server can answer one
from a prompt cache filled by another (llama.cpp and agentrt both keep one).
A server with fewer parallel slots than streams queues the rest; its rate
then includes that queueing (start llama.cpp's with ``-np`` at least the
largest stream count to compare engines rather than slot counts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

from agentrt.log import get_logger

log = get_logger(__name__)

# Room for a 2,000-token prefill on a slow CPU server, with a queue in front of it.
REQUEST_TIMEOUT_S = 600.0


class PeerError(RuntimeError):
    """A server under comparison refused a request or answered something that is not a stream."""


class StreamTiming(msgspec.Struct, kw_only=True):
    sent: float  # perf_counter seconds
    first_token: float
    last_token: float
    chunks: int  # stream chunks that carried a choice
    completion_tokens: int  # the server's usage when it reports one, else ``chunks``
    prompt_tokens: int | None  # the server's usage, when it reports one


class StreamDecode(msgspec.Struct, kw_only=True):
    streams: int
    output_len: int
    tok_s: float  # all streams' tokens after their first, over the span they were produced in
    per_stream_tok_s: float  # median over streams of one stream's own rate
    seconds: float  # first request sent to last token
    roofline_fraction: float | None = None  # weight bytes x steps/s over the memory bandwidth


class FirstToken(msgspec.Struct, kw_only=True):
    prompt_tokens: int  # as the server counted them (the local tokenizer's count when it says none)
    repeats: int
    seconds: float  # median
    best_seconds: float
    prefill_tok_s: float  # prompt_tokens / median seconds


class PeerMeasure(msgspec.Struct, kw_only=True):
    label: str
    base_url: str
    model: str
    how: str  # what was measured: the command that started it, or "external server"
    weight_bytes: int | None  # one decode step's weight reads; None when unknown
    weight_source: str
    decode: list[StreamDecode]
    first_token: FirstToken


class PeerComparison(msgspec.Struct, kw_only=True):
    memory_gb_s: float  # read bandwidth measured in this command
    prompt_len: int  # tokens of each decode stream's prompt
    systems: list[PeerMeasure]


def parse_peer(text: str) -> tuple[str, str, str]:
    """``NAME=URL[#MODEL]`` (as ``bench compare --external``) -> (name, base URL, model)."""
    from agentrt.bench.compare import parse_external

    name, url, model = parse_external(text)
    if name == "agentrt":
        import argparse

        raise argparse.ArgumentTypeError("the name 'agentrt' is taken by the served agentrt side")
    return name, url.rstrip("/"), model


def memory_read_gb_s(megabytes: int = 256, repeats: int = 5) -> float:
    """The best of a few full reads of a buffer far larger than any cache, in GB/s."""
    import torch

    buffer = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return buffer.nbytes / best / 1e9


def gguf_decode_bytes(path: Path) -> int:
    """Bytes of a GGUF model's tensors one decode step reads.

    Every tensor, except that a token embedding separate from the output head
    is read one row per token (with tied embeddings the head reads it whole).
    """
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


def root_url(base_url: str) -> str:
    """The server's root for a ``.../v1`` base URL (llama.cpp serves ``/props`` there)."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


async def peer_weight_bytes(client: httpx.AsyncClient, base_url: str) -> tuple[int | None, str]:
    """The GGUF file behind a llama.cpp server (``/props`` ``model_path``), when it is readable here."""
    try:
        response = await client.get(root_url(base_url) + "/props", timeout=10.0)
        path = response.json().get("model_path") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        path = None
    return gguf_weights(path)


def gguf_weights(path: object) -> tuple[int | None, str]:
    """:func:`gguf_decode_bytes` of ``path`` and where they came from, when it names a GGUF file here."""
    if not isinstance(path, str) or not path.endswith(".gguf") or not Path(path).is_file():
        return None, "unknown: the server names no GGUF file readable here (/props model_path)"
    return gguf_decode_bytes(Path(path)), f"GGUF tensors of {path}"


async def first_model(client: httpx.AsyncClient, base_url: str) -> str:
    response = await client.get(base_url + "/models", timeout=30.0)
    if response.status_code != 200:
        raise PeerError(f"{base_url}/models answered {response.status_code}: {response.text[:200]}")
    data = response.json().get("data") or []
    if not data:
        raise PeerError(f"{base_url}/models lists no model")
    return str(data[0]["id"])


async def stream_completion(
    client: httpx.AsyncClient, base_url: str, model: str, prompt: str, max_tokens: int
) -> StreamTiming:
    """One streamed ``/v1/completions`` call generating exactly ``max_tokens`` tokens, timed."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first = last = 0.0
    chunks = 0
    usage: dict[str, Any] = {}
    async with client.stream("POST", base_url + "/completions", json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise PeerError(f"{base_url}/completions answered {response.status_code}: {text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            try:
                chunk = msgspec.json.decode(data)
            except msgspec.DecodeError as e:
                raise PeerError(
                    f"{base_url}/completions streamed a non-JSON event: {data[:200]}"
                ) from e
            if chunk.get("error"):
                raise PeerError(f"{base_url}/completions streamed an error: {chunk['error']}")
            if chunk.get("choices"):
                last = time.perf_counter()
                first = first or last
                chunks += 1
            if chunk.get("usage"):
                usage = chunk["usage"]
    if chunks == 0:
        raise PeerError(f"{base_url}/completions streamed no token")
    return StreamTiming(
        sent=sent,
        first_token=first,
        last_token=last,
        chunks=chunks,
        completion_tokens=int(usage.get("completion_tokens") or chunks),
        prompt_tokens=int(usage["prompt_tokens"]) if usage.get("prompt_tokens") else None,
    )


def decode_rate(
    timings: Sequence[StreamTiming], output_len: int, weight_bytes: int | None, bandwidth: float
) -> StreamDecode:
    """Aggregate and per-stream decode rates of streams started together."""
    tokens = sum(t.completion_tokens - 1 for t in timings)
    span = max(t.last_token for t in timings) - min(t.first_token for t in timings)
    tok_s = tokens / span if span > 0 else float("nan")
    own = [
        (t.completion_tokens - 1) / (t.last_token - t.first_token)
        for t in timings
        if t.last_token > t.first_token
    ]
    fraction = None
    if weight_bytes is not None and span > 0:
        steps_per_s = tok_s / len(timings)  # every stream gains one token per step
        fraction = weight_bytes * steps_per_s / (bandwidth * 1e9)
    return StreamDecode(
        streams=len(timings),
        output_len=output_len,
        tok_s=tok_s,
        per_stream_tok_s=statistics.median(own) if own else float("nan"),
        seconds=max(t.last_token for t in timings) - min(t.sent for t in timings),
        roofline_fraction=fraction,
    )


class Prompts:
    """Texts of an exact token length (under the model's tokenizer), each unique from its first token."""

    def __init__(self, tokenizer: Any) -> None:
        from agentrt.bench.quality import TEXT

        self.tokenizer = tokenizer
        self.body = list(tokenizer.encode(TEXT, add_special_tokens=False))
        self.issued = 0

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def next(self, tokens: int) -> str:
        """A fresh prompt of about ``tokens`` tokens (exact unless the cut re-tokenizes differently)."""
        self.issued += 1
        head = f"Request {self.issued}. "
        want = max(tokens - self.count(head), 1)
        ids = (self.body * (want // len(self.body) + 1))[:want]
        text: str = self.tokenizer.decode(ids)
        return head + text


async def concurrent_streams(
    client: httpx.AsyncClient, base_url: str, model: str, texts: list[str], max_tokens: int
) -> list[StreamTiming]:
    """One streamed completion per text, all started at once."""
    timings: dict[int, StreamTiming] = {}

    async def one(i: int) -> None:
        timings[i] = await stream_completion(client, base_url, model, texts[i], max_tokens)

    async with anyio.create_task_group() as group:
        for i in range(len(texts)):
            group.start_soon(one, i)
    return [timings[i] for i in range(len(texts))]


@dataclass
class System:
    """A server under comparison, as the measurement sees it."""

    label: str
    base_url: str
    model: str  # "" asks the server's /models
    how: str
    weights: tuple[int | None, str] | None = None  # None: ask its /props
    decode: list[StreamDecode] = field(default_factory=list)
    ttft: list[tuple[float, int]] = field(default_factory=list)  # (seconds, prompt tokens)


async def measure_all(
    http: httpx.AsyncClient, systems: list[System], prompts: Prompts, options: Any, bandwidth: float
) -> list[PeerMeasure]:
    """Warm every server up, then take each measurement on every server in turn.

    Taking turns measurement by measurement spreads drift in the machine's
    background load over all systems instead of onto whichever ran last.
    """
    for system in systems:
        system.model = system.model or await first_model(http, system.base_url)
        if system.weights is None:
            system.weights = await peer_weight_bytes(http, system.base_url)
        log.info("bench_peer_warm_up", system=system.label, model=system.model)
        prompt = prompts.next(options.ttft_prompt_len)
        await stream_completion(http, system.base_url, system.model, prompt, 2)
        prompt = prompts.next(options.prompt_len)
        await stream_completion(http, system.base_url, system.model, prompt, 4)
    for streams in options.streams:
        for system in systems:
            texts = [prompts.next(options.prompt_len) for _ in range(streams)]
            timings = await concurrent_streams(
                http, system.base_url, system.model, texts, options.output_len
            )
            assert system.weights is not None
            rate = decode_rate(timings, options.output_len, system.weights[0], bandwidth)
            system.decode.append(rate)
            log.info(
                "bench_peer_decode",
                system=system.label,
                streams=streams,
                tok_s=round(rate.tok_s, 1),
            )
    for _ in range(options.ttft_repeats):
        for system in systems:
            prompt = prompts.next(options.ttft_prompt_len)
            timing = await stream_completion(http, system.base_url, system.model, prompt, 1)
            counted = timing.prompt_tokens or prompts.count(prompt)
            system.ttft.append((timing.first_token - timing.sent, counted))
    return [summary(system) for system in systems]


def summary(system: System) -> PeerMeasure:
    seconds = [t for t, _ in system.ttft]
    tokens = statistics.median(n for _, n in system.ttft)
    median = statistics.median(seconds)
    assert system.weights is not None
    return PeerMeasure(
        label=system.label,
        base_url=system.base_url,
        model=system.model,
        how=system.how,
        weight_bytes=system.weights[0],
        weight_source=system.weights[1],
        decode=system.decode,
        first_token=FirstToken(
            prompt_tokens=int(tokens),
            repeats=len(seconds),
            seconds=median,
            best_seconds=min(seconds),
            prefill_tok_s=tokens / median,
        ),
    )


def client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits)


def agentrt_serve_args(args: Any) -> list[str]:
    """``agentrt serve`` flags for the bench's model, dtype, quantization, compile and CUDA
    graphs, room for every stream."""
    model = ["--model", args.model] if args.model else []
    compile_flag = ["--compile"] if getattr(args, "compile", False) else []
    graphs = getattr(args, "cuda_graphs", None)
    graphs_flag = [] if graphs is None else ["--cuda-graphs" if graphs else "--no-cuda-graphs"]
    return [
        *model,
        *compile_flag,
        *graphs_flag,
        "--dtype",
        args.dtype,
        "--quantization",
        args.quantization,
        "--max-num-seqs",
        str(max(64, *args.compare_streams)),
        *args.serve_arg,
    ]


def managed_llama_server(args: Any) -> Any:
    """``--llama-server``'s config: a slot per stream, each slot room for the longest prompt."""
    from agentrt.bench.llama_server import LlamaServerError, config_from_args

    longest = max(args.ttft_prompt_len, args.compare_prompt_len + args.compare_output_len)
    try:
        return config_from_args(args, max(args.compare_streams), longest + 64)
    except LlamaServerError as e:
        raise SystemExit(str(e)) from e


def run_comparison(args: Any, tokenizer: Any, agentrt_weight_bytes: int | None) -> PeerComparison:
    """Measure a freshly started ``agentrt serve``, every ``--compare`` server and a freshly started
    ``--llama-server``, taking turns; all are up for the whole run (only one is loaded at a time)."""
    import argparse

    from agentrt.bench.compare import ServerStartError, agentrt_server
    from agentrt.bench.llama_server import LlamaServerError, llama_server

    if tokenizer is None:
        raise SystemExit("--compare needs a model with a tokenizer (the prompts are text)")
    options = argparse.Namespace(
        streams=args.compare_streams,
        prompt_len=args.compare_prompt_len,
        output_len=args.compare_output_len,
        ttft_prompt_len=args.ttft_prompt_len,
        ttft_repeats=args.ttft_repeats,
    )
    bandwidth = memory_read_gb_s()
    prompts = Prompts(tokenizer)
    serve_args = agentrt_serve_args(args)
    how = "agentrt serve " + " ".join(serve_args)
    source = "the lean decoder's weights" if agentrt_weight_bytes is not None else "unknown"

    systems = [System("agentrt", "", "", how, (agentrt_weight_bytes, source))]
    systems += [System(name, url, model, "external server") for name, url, model in args.compare]
    managed = managed_llama_server(args)

    async def measure() -> list[PeerMeasure]:
        async with client() as http:
            return await measure_all(http, systems, prompts, options, bandwidth)

    with ExitStack() as servers:
        try:
            systems[0].base_url = servers.enter_context(
                agentrt_server("fcfs", serve_args, args.startup_timeout)
            )
            if managed is not None:
                url = servers.enter_context(llama_server(managed, args.startup_timeout))
                systems.append(System("llama.cpp", url, "", managed.describe()))
        except (ServerStartError, LlamaServerError) as e:
            raise SystemExit(str(e)) from e
        measured = anyio.run(measure)
    return PeerComparison(
        memory_gb_s=bandwidth, prompt_len=args.compare_prompt_len, systems=measured
    )


def print_comparison(console: Any, comparison: PeerComparison) -> None:
    """One column per system, then agentrt's speed against each other system."""
    from rich.table import Table

    agentrt, *peers = comparison.systems
    table = Table(
        title=f"over HTTP, streaming: decode ({comparison.prompt_len}-token prompts) and time to first "
        f"token; roofline = weight bytes per step at {comparison.memory_gb_s:.1f} GB/s measured read bandwidth"
    )
    table.add_column("measure")
    for system in comparison.systems:
        table.add_column(system.label, justify="right")
    for peer in peers:
        table.add_column(f"agentrt speed / {peer.label}", justify="right")
    for i, d in enumerate(agentrt.decode):
        cells = [_decode_cell(s.decode[i]) for s in comparison.systems]
        ratios = [f"{d.tok_s / p.decode[i].tok_s:.2f}x" for p in peers]
        table.add_row(f"decode, {d.streams} stream(s) x {d.output_len} tok", *cells, *ratios)
    f = agentrt.first_token
    cells = [
        f"{1e3 * s.first_token.seconds:.0f} ms ({s.first_token.prefill_tok_s:.0f} tok/s)"
        for s in comparison.systems
    ]
    ratios = [f"{p.first_token.seconds / f.seconds:.2f}x" for p in peers]
    table.add_row(f"time to first token, {f.prompt_tokens}-token prompt", *cells, *ratios)
    weights = [
        "?" if s.weight_bytes is None else f"{s.weight_bytes / 1e6:.0f} MB"
        for s in comparison.systems
    ]
    table.add_row("weights read per decode step", *weights, *["" for _ in peers])
    console.print(table)
    for system in comparison.systems:
        console.print(
            f"  {system.label}: {system.how}; model {system.model}; weights: {system.weight_source}"
        )


def _decode_cell(d: StreamDecode) -> str:
    roofline = "" if d.roofline_fraction is None else f", {100 * d.roofline_fraction:.0f}% roofline"
    return f"{d.tok_s:.1f} tok/s{roofline}"
