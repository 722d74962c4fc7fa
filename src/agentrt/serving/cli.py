"""``agentrt serve``: the OpenAI-compatible server (uvicorn) over the embedded engine, replicas or remote engines.

With no arguments it serves the embedded default model on 127.0.0.1:8000.
Flags override ``[server]`` of ``--config FILE.toml``, whose other tables
(``[engine]``, ``[scheduler]``, ``[router]``, ``[balancer]``, ``[ray]``)
configure the components behind it. Logs (ours and uvicorn's) are structlog
lines: JSON unless stderr is a terminal.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from agentrt.scheduling.config import POLICIES
from agentrt.serving.config import ServerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    parser.add_argument(
        "--config", metavar="FILE.toml", help="TOML file: [server], [engine], [scheduler], ..."
    )
    parser.add_argument(
        "--model",
        help="HF folder, safetensors folder or GGUF file (default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--served-model-name", help="the model name clients send (default: the engine's)"
    )
    parser.add_argument("--host", help=f"interface to listen on (default {defaults.host})")
    parser.add_argument("--port", type=int, help=f"port (default {defaults.port})")
    parser.add_argument(
        "--scheduling-policy",
        choices=POLICIES,
        help="default atlas",
    )
    parser.add_argument("--max-num-seqs", type=int, help="calls per engine batch")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="the embedded engine's dtype (default auto: bfloat16 with native support, else float32)",
    )
    parser.add_argument(
        "--quantization",
        choices=["none", "int8", "int4"],
        help="weight-only quantized decode on CPU (default none)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode steps through torch.compile, cached on disk (default: [engine] compile)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --compile on CUDA, replay decode steps as CUDA graphs (default: [engine] "
        "cuda_graphs, else on with --compile on CUDA)",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        help="CPU threads for the embedded engine's kernels (default: [engine] num_threads, "
        "else torch's, one per core)",
    )
    parser.add_argument(
        "--decode-threads",
        type=int,
        help="CPU threads for decode-only steps of up to 8 rows (default: [engine] "
        "decode_threads, else --num-threads)",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        help="run the embedded engine's model over N local processes, split by heads "
        "(gloo on CPU, NCCL on CUDA; default 1, or [engine] tensor_parallel_size)",
    )
    parser.add_argument(
        "--pipeline-parallel-size",
        "-pp",
        type=int,
        help="split the embedded engine's model into M pipeline stages (whole layers), one "
        "local process each; not together with --tensor-parallel-size (default 1)",
    )
    parser.add_argument(
        "--kv-cache-memory", help="KV pool: bytes (2GiB, 512MB) or a fraction of memory (0.3)"
    )
    parser.add_argument(
        "--kv-retention",
        choices=["off", "ttl"],
        help="ttl: keep a program's KV pinned across its tool calls and evict by expected "
        "reuse instead of LRU (default off, or [engine.retention] mode of the file)",
    )
    parser.add_argument(
        "--replicas", type=int, help="embedded engines in worker processes, behind the router"
    )
    parser.add_argument(
        "--backend",
        action="append",
        dest="backends",
        metavar="URL",
        help="a remote OpenAI-compatible server ([vllm+|sglang+|llamacpp+|agentrt+|openai+]URL"
        "[,max_inflight=N][,queue_ahead=N]); repeatable",
    )
    parser.add_argument(
        "--ray-address", help="place the engine replicas on this Ray cluster ('auto', ray://...)"
    )
    parser.add_argument(
        "--engine-factory", metavar="MODULE:CALLABLE", help="build the engine with this callable"
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted key; repeatable",
    )
    parser.add_argument(
        "--api-key-file", metavar="FILE.toml", help="[keys] table mapping API keys to tenants"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help=f"largest request body (default {defaults.max_body_bytes})",
    )
    parser.add_argument(
        "--max-concurrent-requests",
        type=int,
        help=f"requests in the engine at once (default {defaults.max_concurrent_requests})",
    )
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        help=f"requests waiting for a slot before 429s (default {defaults.max_queued_requests})",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        help="seconds in-flight requests get to finish after SIGTERM/SIGINT "
        f"(default {defaults.shutdown_timeout:g})",
    )


def server_config(args: argparse.Namespace) -> ServerConfig:
    from agentrt.config import load_config

    return load_config(ServerConfig, args.config, "server", vars(args))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from agentrt.config import ConfigError
    from agentrt.log import get_logger
    from agentrt.serving.engines import open_engine
    from agentrt.serving.http.app import create_app
    from agentrt.serving.http.connections import uvicorn_options

    log = get_logger("agentrt.serve")
    from agentrt.serving.engines import engine_config

    try:
        config = server_config(args)
        engine_config(config, args.config)  # [engine] and its flags, checked before serving
    except ConfigError as e:
        log.error("bad configuration", error=str(e))
        return 2
    app = create_app(lambda: open_engine(config, args.config), config)
    route_stdlib_logging()
    log.info(
        "starting server",
        url=f"http://{config.host}:{config.port}/v1",
        policy=config.scheduling_policy,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            # uvicorn takes whole seconds
            timeout_graceful_shutdown=math.ceil(config.shutdown_timeout),
            **uvicorn_options(config),
        )
    )
    server.run()
    return 0 if server.started else 1


class _StructlogHandler(logging.Handler):
    """Hands stdlib log records (uvicorn's) to structlog, so every line has one format."""

    def emit(self, record: logging.LogRecord) -> None:
        from agentrt.log import get_logger

        fields: dict[str, Any] = {}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        get_logger(record.name).log(record.levelno, record.getMessage(), **fields)


def route_stdlib_logging() -> None:
    handler = _StructlogHandler()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
