"""The standalone server: ``agentrt serve``, and any OpenAI client pointed at it.

From a shell this is one command::

    agentrt serve --port 8000 --scheduling-policy atlas

This script starts the same server as a subprocess (extra arguments go to
``agentrt serve``), waits for ``/health``, and asks it a question with the
plain ``openai`` client: ``python examples/standalone_server.py 8000``.
"""

import subprocess
import sys
import time

import httpx
import openai


def wait_until_healthy(url: str, server: subprocess.Popen) -> None:
    while server.poll() is None:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    sys.exit(f"agentrt serve exited with {server.returncode}")


port = sys.argv[1] if len(sys.argv) > 1 else "8000"
server = subprocess.Popen([sys.executable, "-m", "agentrt.cli", "serve", "--port", port, *sys.argv[2:]])
try:
    wait_until_healthy(f"http://127.0.0.1:{port}/health", server)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY")
    reply = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    print(reply.choices[0].message.content)
finally:
    server.terminate()
    server.wait()
