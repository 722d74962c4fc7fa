"""A stand-in for llama.cpp's ``llama-server``: the echo engine behind agentrt's app, on ``--port``.

It takes llama-server's flags, writes them to ``$FAKE_LLAMA_ARGV`` (one JSON
list per start) so a test can check what the benchmark asked for, answers
``/health`` 503 for a moment as llama.cpp does while it loads, and serves
``/props`` with the ``--model`` path like the real server. Like it, it runs
at most ``--parallel`` calls and queues the rest first come, first served,
and with ``--metrics`` counts both, and the prompt tokens it ran, at
``/metrics``. With ``--slot-save-path`` it takes ``/slots/{id}?action=save|restore``
as the real server does (a save writes the file, a restore of a file never
saved answers 400). ``$FAKE_LLAMA_TOKEN_DELAY`` (seconds, default 0.001) paces
its tokens, so that a benchmark can load it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
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
    parser.add_argument("--slot-save-path")
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
                f"llamacpp:prompt_tokens_total {engine.prompt_tokens}\n"
            )
            await PlainTextResponse(text)(scope, receive, send)
        elif path is not None and path.startswith("/slots/") and args.slot_save_path:
            await slot_action(args.slot_save_path, scope, receive, send)
        else:
            await app(scope, receive, send)

    uvicorn.run(root, host=args.host, port=args.port, log_level="warning")


async def slot_action(directory: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
    message = await receive()
    filename = json.loads(message["body"])["filename"]
    action = scope["query_string"].decode().removeprefix("action=")
    saved = Path(directory) / filename
    if action == "save":
        saved.write_text(scope["path"])
    elif not saved.is_file():
        body = {"error": {"code": 400, "message": "failed to load slot state from file"}}
        await JSONResponse(body, status_code=400)(scope, receive, send)
        return
    await JSONResponse({"id_slot": int(scope["path"].removeprefix("/slots/")), "filename": filename})(
        scope, receive, send
    )


if __name__ == "__main__":
    main()
