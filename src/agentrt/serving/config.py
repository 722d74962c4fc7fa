"""``ServerConfig``: everything ``agentrt serve`` needs, from defaults, ``[server]`` in a TOML file, and flags."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from agentrt.protocol.limits import SAMPLING_BOUNDS
from agentrt.scheduling.config import PolicyName


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The server's own settings; the engine and the scheduler read theirs from the same file."""

    host: str = "127.0.0.1"
    port: int = 8000
    # A model path (HF folder, safetensors folder, GGUF file) or None for the embedded default model.
    model: str | None = None
    # The id clients use in "model"; defaults to the engine's own model id.
    served_model_name: str | None = None
    # Any engine "package.module:callable" builds instead of the embedded one
    # (called with engine_options as keyword arguments), e.g. "agentrt.testing.echo:EchoEngine".
    engine_factory: str | None = None
    engine_options: dict[str, Any] = msgspec.field(default_factory=dict)
    scheduling_policy: PolicyName = "atlas"
    max_num_seqs: int | None = None
    # The embedded engine's dtype and weight-only quantization; unset: [engine] of the file.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    quantization: Literal["none", "int8", "int4"] | None = None
    compile: bool | None = None  # the embedded engine's compiled decode; unset: [engine]
    cuda_graphs: bool | None = None  # its decode steps as CUDA graphs (CUDA); unset: [engine]
    # CPU threads of the embedded engine's kernels; unset: [engine] num_threads (torch's default).
    num_threads: int | None = None
    decode_threads: int | None = None  # for decode steps of few rows; unset: [engine]
    # The embedded engine's model over this many local processes (tensor parallel) and
    # pipeline stages (only 1 for now); unset: [engine] of the file.
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    # KV pool size for the embedded engine: bytes ("2GiB", "512MB", an int) or a fraction ("0.5").
    kv_cache_memory: str | float | None = None
    # Program-aware KV retention of the embedded engine; unset: [engine.retention] of the file.
    kv_retention: Literal["off", "ttl"] | None = None
    replicas: int = 1
    backends: list[str] = msgspec.field(default_factory=list)  # remote OpenAI-compatible servers
    ray_address: str | None = None
    # Auth: keys of the default tenant, and/or a TOML file mapping keys to tenants.
    api_keys: list[str] = msgspec.field(default_factory=list)
    api_key_file: str | None = None
    # Limits: bad or excessive input gets a clear 4xx, overload a 429, never a hang.
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens_limit: int = 32768  # the largest max_tokens a request may ask for
    max_n: int = 16
    # /v1/completions: prompts in one request (each is its own engine call), and prompts x n.
    max_prompts_per_request: int = 128
    max_choices_per_request: int = 256
    max_concurrent_requests: int = 1024  # generation requests handed to the engine at once
    max_queued_requests: int = 1024  # requests waiting at the server for one of those slots
    queue_timeout: float = 30.0  # seconds a queued request waits before a 429
    # Each tenant's share (overridden per tenant by [tenants.NAME] in api_key_file): in-flight
    # and queued requests (unset: half the server's once the key file names two tenants or
    # more, else all of it) and the size of its own program table.
    tenant_max_concurrent_requests: int | None = None
    tenant_max_queued_requests: int | None = None
    tenant_max_programs: int = 100_000
    # /v1/responses: the responses each tenant keeps for previous_response_id and
    # GET /v1/responses/{id}, and the bytes they may hold (each counted as its whole
    # conversation and its response object); the least recently used go first. A size of 0
    # keeps none, and previous_response_id is refused.
    responses_store_size: int = 1000
    responses_store_bytes: int = 64 * 1024 * 1024
    retry_after: float = 1.0  # the Retry-After the server suggests when it sheds load
    # Connections (agentrt serve): the seconds a request head and a request body may take to
    # arrive; uvicorn's idle time between requests, cap on connections and tasks (beyond it
    # new requests get a 503; default: what the file-descriptor limit leaves room for), cap on
    # the bytes of a request head, and listen backlog.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    timeout_keep_alive: float = 5.0
    limit_concurrency: int | None = None
    h11_max_incomplete_event_size: int = 16 * 1024
    backlog: int = 2048
    # One log line per request (and the startup and disconnect lines), at this level: "info"
    # for agentrt serve; serve_in_process uses "debug", so the user's terminal shows the program.
    log_requests: bool = True
    request_log_level: Literal["debug", "info"] = "info"
    # After SIGTERM/SIGINT, in-flight requests get this many seconds to finish
    # before their connections are cut and the process exits (a stuck stream
    # must not keep a stopping server alive).
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.shutdown_timeout >= 0:
            raise ValueError("shutdown_timeout must be >= 0 seconds")
        # The server's limits tighten the bounds every engine shares; they cannot widen them.
        if not 1 <= self.max_tokens_limit <= SAMPLING_BOUNDS["max_tokens"].high:
            raise ValueError(
                f"max_tokens_limit must be in {SAMPLING_BOUNDS['max_tokens'].describe()}"
            )
        if not 1 <= self.max_n <= SAMPLING_BOUNDS["n"].high:
            raise ValueError(f"max_n must be in {SAMPLING_BOUNDS['n'].describe()}")
        for name in ("header_timeout", "body_timeout", "timeout_keep_alive"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError("limit_concurrency must be >= 1")
        if self.h11_max_incomplete_event_size < 1024 or self.backlog < 1:
            raise ValueError("h11_max_incomplete_event_size must be >= 1024 and backlog >= 1")
        if self.max_prompts_per_request < 1 or self.max_choices_per_request < 1:
            raise ValueError("max_prompts_per_request and max_choices_per_request must be >= 1")
        if self.responses_store_size < 0 or self.responses_store_bytes < 0:
            raise ValueError("responses_store_size and responses_store_bytes must be >= 0")
