"""The one config object of the embedded engine (loadable from TOML and CLI flags).

Sizes that depend on the machine (the KV pool, the context length) accept
either an absolute value or ``None``/a fraction and are resolved once, when
the engine starts, by :func:`resolve_kv_pool_bytes` and the model runner.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from agentrt.config import ConfigError
from agentrt.scheduling import RetentionConfig, SchedulerConfig

PreemptionMode = Literal["auto", "swap", "recompute"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["none", "int8", "int4"]


class EngineConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything that shapes one engine instance.

    ``kv_cache_memory`` is bytes when > 1, else a fraction of the device's
    memory (total GPU memory on CUDA, available RAM on CPU).
    ``num_kv_blocks`` overrides the size computed from it (tests, benchmarks).
    ``preemption_mode`` ``auto`` picks swap or recompute per victim by
    estimated cost; recompute is always used when the host pool is full.
    ``num_scheduler_steps`` > 1 asks the scheduler for a batch only every N
    steps (multi-step scheduling, as in Autellix); in between the same calls
    keep running unless one finishes or runs out of KV.
    """

    model: str = ""  # HF folder, safetensors or GGUF file; "" = the default model
    # "auto": the dtype this device computes fastest in (loader.auto_dtype).
    dtype: DType = "auto"
    device: str = "cpu"
    # CPU threads for torch's kernels (process-wide); None keeps torch's default.
    # On a shared or oversubscribed machine fewer threads avoid barrier stalls.
    num_threads: int | None = None
    # CPU threads for decode-only steps of at most model_runner.FEW_DECODE_ROWS rows (None:
    # the same as every step); prefill and wide batches keep every thread.
    decode_threads: int | None = None
    # CPU, float32 (or bfloat16 with native bfloat16 instructions): keep a oneDNN-packed
    # copy of each linear weight for decode-sized batches (faster; one more copy of those
    # weights in memory). See engine/linear.py.
    packed_linears: bool = True
    # Run supported architectures (Llama, Mistral, Qwen2) through the engine's own lean
    # forward (fused projections; engine/decoder.py) instead of transformers' modules.
    lean_decoder: bool = True
    # Weight-only quantized decode (CPU, lean decoder only): int8 per channel, or int4 in
    # groups of 32 with an int8 head; steps of more rows than matmul.max_quantized_rows
    # (wide decode batches, prompt chunks) multiply by the dense weights.
    quantization: Quantization = "none"
    # Decode-only steps through torch.compile (inductor), one graph per power-of-two batch
    # bucket, cached on disk under compile_cache_dir (None: $AGENTRT_CACHE_DIR/inductor).
    # Lean decoder only. Off by default: with a cold cache the compiles take minutes on a
    # small CPU host (at start-up with compile_warmup, else in each bucket's first step).
    compile: bool = False
    # With compile on, compile every bucket up to max_num_seqs when the engine starts (each
    # from the disk cache after the first run), so that no request waits on a compile.
    compile_warmup: bool = True
    compile_cache_dir: str | None = None
    # With compile on a CUDA device: pad each decode step's block table to a power-of-two
    # width and replay it as a CUDA graph, one per (batch bucket, width) shape, captured with
    # the warm-up (or at each shape's first step). None: on exactly when compile is on and the
    # device is CUDA; true elsewhere is an error. See engine/decode_graphs.py.
    cuda_graphs: bool | None = None
    block_size: int = 16
    kv_cache_memory: float = 0.1
    num_kv_blocks: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's own limit
    swap_space: int = 4 * 1024**3  # bytes of host memory for swapped-out KV
    preemption_mode: PreemptionMode = "auto"
    num_scheduler_steps: int = 1
    enable_prefix_caching: bool = True
    seed: int = 0
    # Run the model over this many local processes (Megatron tensor parallel: attention split
    # by KV heads, the MLP by hidden units), gloo on CPU and NCCL on CUDA (one GPU per rank);
    # the scheduler stays one, in this process. See engine/tensor_parallel.py.
    tensor_parallel_size: int = 1
    # Or split its layers into this many pipeline stages, one process each (the KV cache
    # by layer); a step passes through the stages in turn. Not together with tensor parallel.
    pipeline_parallel_size: int = 1
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    # Program-aware KV retention (``[engine.retention]``): ``mode = "ttl"`` pins a finished
    # call's blocks for its program's predicted tool time and evicts by expected reuse.
    retention: RetentionConfig = msgspec.field(default_factory=lambda: RetentionConfig(mode="off"))

    def __post_init__(self) -> None:
        positive = {
            "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "num_scheduler_steps": self.num_scheduler_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"EngineConfig.{name} must be >= 1, got {value}")
        if self.kv_cache_memory <= 0:
            raise ConfigError(
                "EngineConfig.kv_cache_memory must be > 0 (bytes, or a fraction <= 1)"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError("EngineConfig.num_kv_blocks must be >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError("EngineConfig.num_threads must be >= 1")
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ConfigError("EngineConfig.decode_threads must be >= 1")
        if self.swap_space < 0:
            raise ConfigError("EngineConfig.swap_space must be >= 0")
        if self.quantization != "none" and not self.lean_decoder:
            raise ConfigError("EngineConfig.quantization needs lean_decoder = true")
        if self.tensor_parallel_size < 1:
            raise ConfigError("EngineConfig.tensor_parallel_size must be >= 1")
        if self.pipeline_parallel_size < 1:
            raise ConfigError("EngineConfig.pipeline_parallel_size must be >= 1")
        if self.tensor_parallel_size > 1 and self.pipeline_parallel_size > 1:
            raise ConfigError(
                "EngineConfig.tensor_parallel_size and pipeline_parallel_size cannot both be "
                "> 1 yet: split the model one way"
            )
        if self.tensor_parallel_size * self.pipeline_parallel_size > 1 and (
            self.compile or not self.lean_decoder
        ):
            raise ConfigError(
                "EngineConfig.tensor_parallel_size or pipeline_parallel_size > 1 runs the lean "
                "decoder without torch.compile: set lean_decoder = true and compile = false"
            )
        if self.cuda_graphs and not self.compile:
            raise ConfigError(
                "EngineConfig.cuda_graphs = true needs compile = true: the graphs capture the "
                "compiled decode step"
            )
        if self.cuda_graphs and self.device.split(":")[0] != "cuda":
            raise ConfigError(
                f"EngineConfig.cuda_graphs = true needs a CUDA device, got {self.device!r}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError("EngineConfig.max_model_len must be >= 2")
