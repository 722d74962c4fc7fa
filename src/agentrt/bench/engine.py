"""``agentrt bench engine``: how fast the embedded engine is, against transformers on the same prompts.

One command, one process, one model (SmolLM2-135M-Instruct by default):

1. offline throughput: ``--num-prompts`` prompts of mixed length, each
   generating ``--output-len`` tokens (``ignore_eos``, greedy), through our
   engine and through transformers' own continuous batching
   (``model.generate_batch``); the ratio of output tokens per second;
2. batched decode at ``--decode-batch`` sequences: tokens/s and the share of
   the compute roofline (``2 x params`` FLOPs per token against a matrix
   multiply peak measured in the same command, same dtype);
3. single-stream decode tokens/s;
4. one swap-out + swap-in of a ``--swap-tokens`` context: one batched copy
   against one copy per block;
5. with ``--quality`` (needs a tokenizer): greedy-token agreement with a
   float32, unquantized engine over 20 prompts and the perplexity of a fixed
   text under both (``agentrt.bench.quality``);
6. with ``--compare NAME=URL`` (an OpenAI-compatible server already running,
   e.g. llama.cpp's): ``agentrt serve`` started with the bench's model, dtype
   and quantization, and each named server, measured alike over HTTP with
   streaming: decode tokens/s at 1, 8 and 32 streams, time to first token for
   a 2,000-token prompt, and each one's memory roofline fraction
   (``agentrt.bench.peer``). ``--llama-server PATH`` adds a freshly started
   llama.cpp server on the GGUF file, one slot per stream, as ``llama.cpp``
   (``agentrt.bench.llama_server``). ``--compare-only`` skips sections 1 to 5.

Unless ``--skip-baseline``, single-stream decode is also timed through
transformers' ``generate`` on the same model (its own KV cache, no
batching), so the engine's per-step overhead shows as a ratio.

On CUDA the same runs on the GPU (xformers attention when installed, pinned
swap pool). Prompts are random token ids from a seeded generator: the model's
cost does not depend on what the tokens say, and this needs no data set.

Every engine step of sections 1 to 3 is also written to the JSON as
``{"prefill_tokens", "decode_seqs", "kv_tokens", "seconds"}``, the records
the simulator's step-time profile is fitted on.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import msgspec

from agentrt.bench import llama_server
from agentrt.bench.peer import PeerComparison, parse_peer
from agentrt.bench.quality import Quality
from agentrt.bench.swap import Swap, run_swap
from agentrt.log import get_logger
from agentrt.protocol.engine import StepRecord

log = get_logger(__name__)

# Matrix-multiply peaks measured on the project's 2-core CPU hosts; shown next to the peak measured here.
REFERENCE_PEAK_GFLOPS = {"float32": 87.0, "bfloat16": 235.0}


class Throughput(msgspec.Struct, kw_only=True):
    prompts: int
    prompt_tokens: int
    output_len: int
    engine_tokens: int
    engine_seconds: float
    engine_tok_s: float
    baseline_tokens: int
    baseline_seconds: float
    baseline_tok_s: float
    ratio: float  # engine_tok_s / baseline_tok_s


class Decode(msgspec.Struct, kw_only=True):
    batch: int
    steps: int
    tok_s: float
    gflops: float  # 2 x params x tok_s
    roofline_fraction: float  # of the peak measured in this command
    best_tok_s: float = 0.0  # from the fastest step: the floor on a shared, noisy machine
    weight_gb_s: float | None = None  # weight bytes one step streams x steps per second
    baseline_tok_s: float | None = None  # transformers generate, single stream only
    ratio: float | None = None  # tok_s / baseline_tok_s


class EngineBenchResult(msgspec.Struct, kw_only=True):
    model: str
    device: str
    dtype: str
    dtype_reason: str  # why this dtype ran: configured, or what ``auto`` saw on this host
    quantization: str
    parameters: int
    threads: int
    attention: str
    peak_gflops: float  # best dense matmul measured here, in the bench's dtype
    reference_peak_gflops: float | None  # the reference peak for this dtype (CPU only)
    throughput: Throughput | None
    batched_decode: Decode | None  # None with --compare-only, as every in-process section
    single_stream: Decode | None
    swap: Swap | None
    quality: Quality | None
    steps: list[StepRecord]
    comparison: PeerComparison | None = None
    # Decode steps the sections ran through the compiled graphs (--compile), and of those the
    # steps replayed as CUDA graphs.
    compiled_decode_steps: int = 0
    cuda_graph_replays: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="HF folder, safetensors or GGUF (default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument(
        "--quantization",
        default="none",
        choices=["none", "int8", "int4"],
        help="weight-only quantized decode (CPU): int8, or int4 with an int8 head",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="decode steps through torch.compile ([engine] compile); every batch size is "
        "compiled (or loaded from the disk cache) when the engine starts",
    )
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --compile on CUDA, decode steps as CUDA graphs ([engine] cuda_graphs; "
        "default on with --compile on CUDA)",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        help="the engine's model over N local processes ([engine] tensor_parallel_size)",
    )
    parser.add_argument(
        "--pipeline-parallel-size",
        "-pp",
        type=int,
        default=1,
        help="the engine's model in M pipeline stages ([engine] pipeline_parallel_size)",
    )
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--min-prompt-len", type=int, default=16)
    parser.add_argument("--max-prompt-len", type=int, default=512)
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--decode-steps", type=int, default=32, help="timed decode steps")
    parser.add_argument("--swap-tokens", type=int, default=2048)
    parser.add_argument(
        "--skip-baseline", action="store_true", help="do not run transformers' generate_batch"
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="also measure greedy agreement and perplexity against float32 (unquantized)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    compare = parser.add_argument_group(
        "comparison with other servers, over HTTP (agentrt.bench.peer)"
    )
    compare.add_argument(
        "--compare",
        type=parse_peer,
        action="append",
        default=[],
        metavar="NAME=URL[#MODEL]",
        help="a running OpenAI-compatible server to measure next to `agentrt serve` (repeatable), "
        "e.g. llama.cpp=http://127.0.0.1:8080/v1",
    )
    compare.add_argument(
        "--compare-only", action="store_true", help="skip the in-process sections; needs --compare"
    )
    compare.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the compared `agentrt serve` (repeatable)",
    )
    compare.add_argument(
        "--compare-streams",
        type=parse_counts,
        default=[1, 8, 32],
        help="concurrent streams per decode measurement (comma list)",
    )
    compare.add_argument(
        "--compare-prompt-len", type=int, default=64, help="tokens per decode prompt"
    )
    compare.add_argument(
        "--compare-output-len", type=int, default=64, help="tokens per decode stream"
    )
    compare.add_argument("--ttft-prompt-len", type=int, default=2000)
    compare.add_argument("--ttft-repeats", type=int, default=3)
    compare.add_argument(
        "--startup-timeout",
        type=float,
        default=600.0,
        help="seconds for `agentrt serve` (and a managed llama-server) to be healthy",
    )
    llama_server.add_arguments(parser)


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of positive integers, got {text!r}"
        )
    return counts


def apply_quick(args: argparse.Namespace) -> None:
    """``--quick``: every section runs, on sizes that take seconds."""
    args.num_prompts = min(args.num_prompts, 6)
    args.output_len = min(args.output_len, 8)
    args.min_prompt_len, args.max_prompt_len = 4, 24
    args.decode_batch = min(args.decode_batch, 4)
    args.decode_steps = min(args.decode_steps, 4)
    args.swap_tokens = min(args.swap_tokens, 128)


def run(args: argparse.Namespace) -> int:
    import torch

    from agentrt.engine.loader import dtype_reason, load_model, resolve_dtype

    if args.quick:
        apply_quick(args)
    if args.min_prompt_len < 1 or args.max_prompt_len < args.min_prompt_len:
        raise SystemExit("need 1 <= --min-prompt-len <= --max-prompt-len")
    compared = bool(args.compare or args.llama_server)
    if args.compare_only and not compared:
        raise SystemExit("--compare-only needs --compare NAME=URL or --llama-server")
    if min(args.compare_prompt_len, args.compare_output_len, args.ttft_prompt_len) < 2:
        raise SystemExit(
            "--compare-prompt-len, --compare-output-len and --ttft-prompt-len must be >= 2"
        )
    if args.ttft_repeats < 1:
        raise SystemExit("--ttft-repeats must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.cuda_graphs and (not args.compile or not device.startswith("cuda")):
        raise SystemExit(f"--cuda-graphs needs --compile and a CUDA device, not {device}")
    reason = dtype_reason(args.dtype, device)
    args.dtype = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    loaded = load_model(args.model, dtype=args.dtype, device=device)
    peak = matmul_peak_gflops(args.dtype, device, size=1024 if args.quick else 2048)
    sections: dict[str, Any] = {
        "attention": "not run",
        "throughput": None,
        "batched_decode": None,
        "single_stream": None,
        "swap": None,
        "quality": None,
        "steps": [],
    }
    weight_bytes = None
    if not args.compare_only:
        engine = run_sections(args, device, loaded, peak, sections)
        if engine.runner.decoder is not None:
            weight_bytes = engine.runner.decoder.weight_bytes
        stats = engine.stats()
        sections["compiled_decode_steps"] = stats.compiled_decode_steps
        sections["cuda_graph_replays"] = stats.cuda_graph_replays
        engine.close()
    comparison = None
    if compared:
        from agentrt.bench.peer import run_comparison

        if weight_bytes is None:
            weight_bytes = decoder_weight_bytes(loaded, args.quantization)
        comparison = run_comparison(args, loaded.tokenizer, weight_bytes)
    result = EngineBenchResult(
        model=loaded.name,
        device=device,
        dtype=args.dtype,
        dtype_reason=reason,
        quantization=args.quantization,
        parameters=loaded.num_parameters,
        threads=torch.get_num_threads(),
        peak_gflops=peak,
        reference_peak_gflops=REFERENCE_PEAK_GFLOPS.get(args.dtype) if device == "cpu" else None,
        comparison=comparison,
        **sections,
    )
    print_result(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    return 0


def run_sections(
    args: argparse.Namespace, device: str, loaded: Any, peak: float, out: dict[str, Any]
) -> Any:
    """Sections 1 to 5 on an in-process engine; fills ``out`` and returns the engine."""
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    prompts = make_prompts(args, loaded.vocab_size, generator)

    steps: list[StepRecord] = []
    engine = make_engine(args, loaded, prompts)
    warm_up(engine)
    throughput_run = run_offline(engine, prompts, args.output_len, steps)
    log.info(
        "bench_engine_offline_done", seconds=round(throughput_run[0], 2), tokens=throughput_run[1]
    )
    baseline = None if args.skip_baseline else run_baseline(args, device, prompts)
    if baseline is not None:
        log.info("bench_engine_baseline_done", seconds=round(baseline[0], 2), tokens=baseline[1])
    throughput = None
    if baseline is not None:
        seconds, tokens = throughput_run
        base_seconds, base_tokens = baseline
        throughput = Throughput(
            prompts=len(prompts),
            prompt_tokens=sum(len(p) for p in prompts),
            output_len=args.output_len,
            engine_tokens=tokens,
            engine_seconds=seconds,
            engine_tok_s=tokens / seconds,
            baseline_tokens=base_tokens,
            baseline_seconds=base_seconds,
            baseline_tok_s=base_tokens / base_seconds,
            ratio=(tokens / seconds) / (base_tokens / base_seconds),
        )
    params = loaded.num_parameters
    batched = run_decode(
        engine, args.decode_batch, args.decode_steps, generator, steps, params, peak
    )
    single = run_decode(engine, 1, args.decode_steps, generator, steps, params, peak)
    decoder = engine.runner.decoder
    if decoder is not None:
        for d in (batched, single):
            d.weight_gb_s = decoder.weight_bytes * d.tok_s / d.batch / 1e9
    if not args.skip_baseline:
        single.baseline_tok_s = generate_tok_s(loaded, args.decode_steps, generator)
        single.ratio = single.tok_s / single.baseline_tok_s
    log.info(
        "bench_engine_decode_done",
        batched_tok_s=round(batched.tok_s, 1),
        single_tok_s=round(single.tok_s, 1),
    )
    out.update(
        attention="xformers" if engine.runner.use_xformers else "sdpa",
        throughput=throughput,
        batched_decode=batched,
        single_stream=single,
        swap=run_swap(engine, args.swap_tokens),
        quality=run_quality(args, device, loaded, engine) if args.quality else None,
        steps=steps,
    )
    return engine


def decoder_weight_bytes(loaded: Any, quantization: str) -> int | None:
    """Weight bytes one decode step of the lean decoder reads, built here from ``loaded``;
    ``None`` when the engine would not run this model through it (or not quantized on this device)."""
    import torch

    from agentrt.engine.decoder import LeanDecoder, unsupported_reason

    if unsupported_reason(loaded.model) is not None:
        return None
    if quantization != "none" and loaded.device.type != "cpu":
        return None
    with torch.inference_mode():
        return LeanDecoder(loaded.model, 1, pack=False, quantization=quantization).weight_bytes


def make_prompts(args: argparse.Namespace, vocab_size: int, generator: Any) -> list[list[int]]:
    """Seeded random prompts with lengths spread evenly over [min, max]."""
    import torch

    lengths = torch.randint(
        args.min_prompt_len, args.max_prompt_len + 1, (args.num_prompts,), generator=generator
    )
    return [torch.randint(0, vocab_size, (int(n),), generator=generator).tolist() for n in lengths]


def make_engine(args: argparse.Namespace, loaded: Any, prompts: list[list[int]]) -> Any:
    """An engine whose KV pool holds every sequence of every section at once (no preemption)."""
    from agentrt.engine.config import EngineConfig
    from agentrt.engine.llm_engine import LLMEngine

    block = 16
    need_tokens = sum(len(p) + args.output_len + block for p in prompts)
    decode_tokens = args.decode_batch * (64 + args.decode_steps + 8 + block)
    blocks = max(need_tokens, decode_tokens, args.swap_tokens) // block + 8
    config = EngineConfig(
        dtype=args.dtype,
        device=str(loaded.device),
        block_size=block,
        num_kv_blocks=blocks,
        max_num_seqs=max(args.num_prompts, args.decode_batch),
        max_num_batched_tokens=2048,
        swap_space=2 * (args.swap_tokens // block + 1) * loaded_block_bytes(loaded, block),
        enable_prefix_caching=False,  # random prompts share nothing; keep the figures about compute
        seed=args.seed,
        quantization=args.quantization,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
    )
    return LLMEngine(config, loaded)


def loaded_block_bytes(loaded: Any, block_size: int) -> int:
    from agentrt.engine.kv_cache import PagedKVCache
    from agentrt.engine.model_runner import ModelShape

    shape = ModelShape.of(loaded.model.config)
    return PagedKVCache.bytes_per_block(
        shape.num_layers, block_size, shape.num_kv_heads, shape.head_dim, loaded.dtype
    )


def warm_up(engine: Any) -> None:
    """One short untimed request, so first-call costs (allocator, kernels) are not measured."""
    from agentrt.protocol.engine import SamplingParams

    engine.generate(
        [[1, 2, 3, 4, 5, 6, 7, 8]], SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0)
    )


def timed_step(engine: Any, records: list[StepRecord]) -> None:
    """Run one engine step and keep the engine's own record of it (what it fed, how long)."""
    engine.last_step = None
    engine.step()
    if engine.last_step is not None:
        records.append(engine.last_step)


def run_offline(
    engine: Any, prompts: list[list[int]], output_len: int, records: list[StepRecord]
) -> tuple[float, int]:
    """All prompts at once, to completion; returns (seconds, output tokens)."""
    from agentrt.protocol.engine import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0)
    seqs = [engine.add_request(f"offline-{i}", p, params)[0] for i, p in enumerate(prompts)]
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        timed_step(engine, records)
    seconds = time.perf_counter() - started
    return seconds, sum(s.num_output_tokens for s in seqs)


def run_baseline(
    args: argparse.Namespace, device: str, prompts: list[list[int]]
) -> tuple[float, int]:
    """transformers' continuous batching on the same prompts (a fresh copy of the model)."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    from agentrt.engine.loader import load_model

    model = load_model(args.model, dtype=args.dtype, device=device).model
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=args.output_len, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    # Left unset, its KV pool takes most of the machine's memory (~20 s to allocate
    # here); give it room for every sequence at once, as our engine gets. Its block size is
    # ``page_size`` in recent transformers, ``block_size`` in 5.17.
    defaults = ContinuousBatchingConfig()
    page = getattr(defaults, "page_size", defaults.block_size)
    blocks = sum(-(-(len(p) + args.output_len) // page) for p in prompts) + 8
    cb_config = ContinuousBatchingConfig(num_blocks=blocks)
    warm = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=2, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    model.generate_batch(
        [[1, 2, 3, 4, 5, 6, 7, 8]], generation_config=warm, continuous_batching_config=cb_config
    )
    started = time.perf_counter()
    outputs = model.generate_batch(
        prompts, generation_config=config, continuous_batching_config=cb_config, warmup=False
    )
    seconds = time.perf_counter() - started
    failed = [o.error for o in outputs.values() if o.error]
    if failed:
        raise RuntimeError(f"transformers' generate_batch failed: {failed[0]}")
    return seconds, sum(len(o.generated_tokens) for o in outputs.values())


def generate_tok_s(loaded: Any, new_tokens: int, generator: Any) -> float:
    """transformers ``generate`` decode speed, one stream: ``new_tokens`` more tokens' extra time.

    Runs on the engine's own model object (the lean decoder shares its
    weights), with transformers' SDPA attention for the duration.
    """
    import torch

    model = loaded.model
    prompt = torch.randint(0, loaded.vocab_size, (1, 64), generator=generator)
    mask = torch.ones_like(prompt)
    before = model.config._attn_implementation
    model.set_attn_implementation("sdpa")

    def seconds(tokens: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                prompt,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
            )
        return time.perf_counter() - started

    try:
        seconds(2)  # warm-up
        extra = min(seconds(new_tokens + 1) for _ in range(2)) - min(seconds(1) for _ in range(2))
    finally:
        model.set_attn_implementation(before)
    return new_tokens / max(extra, 1e-9)


def run_quality(args: argparse.Namespace, device: str, loaded: Any, engine: Any) -> Quality:
    """Agreement and perplexity of the bench's engine against a float32, unquantized one."""
    from agentrt.bench import quality
    from agentrt.engine.config import EngineConfig
    from agentrt.engine.llm_engine import LLMEngine
    from agentrt.engine.loader import load_model

    if loaded.tokenizer is None:
        raise SystemExit("--quality needs a model with a tokenizer")
    reference_loaded = load_model(args.model, dtype="float32", device=device)
    reference = LLMEngine(
        EngineConfig(
            dtype="float32",
            device=device,
            num_kv_blocks=engine.runner.kv_cache.num_blocks,
            block_size=engine.config.block_size,
            enable_prefix_caching=False,
            seed=args.seed,
        ),
        reference_loaded,
    )
    setting = args.dtype + ("" if args.quantization == "none" else f", {args.quantization} weights")
    return quality.measure(engine, reference, loaded.tokenizer, setting)


def matmul_peak_gflops(dtype: str, device: str, size: int = 2048, repeats: int = 5) -> float:
    """The best of a few square matrix multiplies: what this machine's cores can do in ``dtype``."""
    import torch

    from agentrt.engine.loader import resolve_dtype

    a = torch.randn(size, size, device=device).to(resolve_dtype(dtype))
    b = torch.randn(size, size, device=device).to(resolve_dtype(dtype))
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_decode(
    engine: Any,
    batch: int,
    steps: int,
    generator: Any,
    records: list[StepRecord],
    params: int,
    peak_gflops: float,
) -> Decode:
    """``batch`` sequences with 64-token prompts; times ``steps`` steps once all are decoding."""
    import torch

    from agentrt.protocol.engine import SamplingParams

    sampling = SamplingParams(max_tokens=steps + 4, ignore_eos=True, temperature=0.0)
    vocab = engine.vocab_size
    for i in range(batch):
        prompt = torch.randint(0, vocab, (64,), generator=generator).tolist()
        engine.add_request(f"decode-{batch}-{i}", prompt, sampling)
    decode_times: list[float] = []
    while engine.has_unfinished_requests():
        count = len(records)
        timed_step(engine, records)
        step = records[count] if len(records) > count else None
        if step is not None and step.prefill_tokens == 0 and step.decode_seqs == batch:
            decode_times.append(step.seconds)
    if not decode_times:
        raise RuntimeError(f"no step decoded all {batch} sequences together")
    tok_s = batch / statistics.median(decode_times)
    gflops = 2 * params * tok_s / 1e9
    return Decode(
        batch=batch,
        steps=len(decode_times),
        tok_s=tok_s,
        best_tok_s=batch / min(decode_times),
        gflops=gflops,
        roofline_fraction=gflops / peak_gflops,
    )


def print_result(result: EngineBenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"agentrt bench engine: {result.model}, {result.dtype} ({result.dtype_reason})"
        f"{'' if result.quantization == 'none' else ', ' + result.quantization + ' weights'} on {result.device} "
        f"({result.threads} threads, {result.attention} attention)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("against", justify="right")
    t = result.throughput
    if t is not None:
        table.add_row(
            f"offline throughput ({t.prompts} prompts, {t.prompt_tokens} prompt tok, x{t.output_len} out)",
            f"{t.engine_tok_s:.1f} tok/s",
            f"transformers generate_batch {t.baseline_tok_s:.1f} tok/s: {t.ratio:.2f}x",
        )
    peak = f"matmul peak {result.peak_gflops:.0f} GFLOP/s"
    if result.reference_peak_gflops is not None:
        peak += f" (reference: {result.reference_peak_gflops:.0f})"
    for label, d in (
        ("batched decode", result.batched_decode),
        ("single-stream decode", result.single_stream),
    ):
        if d is None:
            continue
        against = f"{d.gflops:.1f} GFLOP/s = {100 * d.roofline_fraction:.0f}% of {peak}"
        if d.weight_gb_s is not None:
            against += f"; weights streamed {d.weight_gb_s:.1f} GB/s"
        if d.baseline_tok_s is not None and d.ratio is not None:
            against += f"; transformers generate {d.baseline_tok_s:.1f} tok/s: {d.ratio:.2f}x"
        value = f"{d.tok_s:.1f} tok/s (best step {d.best_tok_s:.1f})"
        table.add_row(f"{label} (batch {d.batch})", value, against)
    s = result.swap
    if s is not None:
        table.add_row(
            f"swap out+in, {s.tokens}-token context ({s.bytes / 2**20:.1f} MiB{', pinned' if s.pinned else ''})",
            f"{1e3 * s.batched_seconds:.2f} ms batched",
            f"{1e3 * s.per_block_seconds:.2f} ms per block: {s.speedup:.1f}x",
        )
    q = result.quality
    if q is not None:
        table.add_row(
            f"greedy agreement with float32 ({q.prompts} prompts, {q.tokens} tokens)",
            f"{100 * q.teacher_forced_agreement:.1f}% teacher-forced",
            f"{100 * q.free_running_agreement:.1f}% free-running ({q.setting})",
        )
        table.add_row(
            f"perplexity, fixed text ({q.text_tokens} tokens)",
            f"{q.perplexity:.3f}",
            f"float32 {q.reference_perplexity:.3f}: {q.perplexity_ratio:.4f}x",
        )
    if result.compiled_decode_steps:
        table.add_row(
            "decode steps compiled",
            str(result.compiled_decode_steps),
            f"{result.cuda_graph_replays} replayed as CUDA graphs",
        )
    table.add_row("engine steps recorded", str(len(result.steps)), "")
    console = Console()
    console.print(table)
    if result.comparison is not None:
        from agentrt.bench.peer import print_comparison

        print_comparison(console, result.comparison)
