"""A stand-in for llama.cpp's ``llama-server``: the echo engine behind agentrt's app, on ``--port``.

It takes llama-server's flags, writes them to ``$FAKE_LLAMA_ARGV`` (one JSON
list per start) so a test can check what the benchmark asked for, answers
``/health`` 503 for a moment as llama.cpp does while it loads, and serves
``/props`` with the ``--model`` path like the real server. Like it, it runs
at most ``--parallel`` calls and queues the rest first come, first served,
and with ``--metrics`` counts both at ``/metrics``. ``$FAKE_LLAMA_TOKEN_DELAY``
(seconds, default 0.001) paces its tokens, so that a benchmark can load it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import uvicorn
from starlette.responses import JSONResponse, PlainTextResponse

from agentrt.serving.config import ServerConfig
from agentrt.serving.http.app import create_app
from agentrt.testing.echo import EchoEngine

LOADING_S = 0.5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--parallel", type=int)
    parser.add_argument("--ctx-size", type=int)
    parser.add_argument("--no-webui", action="store_true")
    parser.add_argument("--metrics", action="store_true")
    args, _ = parser.parse_known_args()
    with open(os.environ["FAKE_LLAMA_ARGV"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\n")
    started = time.monotonic()
    token_delay = float(os.environ.get("FAKE_LLAMA_TOKEN_DELAY", "0.001"))
    engine = EchoEngine(token_delay=token_delay, slots=args.parallel)
    app = create_app(engine, ServerConfig(log_requests=False))

    async def root(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path == "/health" and time.monotonic() - started < LOADING_S:
            body = {"error": {"code": 503, "message": "Loading model"}}
            await JSONResponse(body, status_code=503)(scope, receive, send)
        elif path == "/props":
            body = {"model_path": args.model, "total_slots": args.parallel}
            await JSONResponse(body)(scope, receive, send)
        elif path == "/metrics" and args.metrics:
            stats = engine.stats()
            text = (
                f"llamacpp:requests_processing {stats.running}\n"
                f"llamacpp:requests_deferred {stats.waiting}\n"
            )
            await PlainTextResponse(text)(scope, receive, send)
        else:
            await app(scope, receive, send)

    uvicorn.run(root, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
