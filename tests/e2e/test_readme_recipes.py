"""Each recipe of the README's "Using agent frameworks" runs, as written, against a real server.

A recipe is the ``python`` block after a ``<!-- recipe: NAME -->`` line. It runs
in a fresh interpreter (``agentrt.instrument()`` patches the process) with the
README's server URL pointed at an echo server on a loopback port; the server
must see one program make the recipe's calls, and end it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.unit.agents.live_server import echo_server

README = Path(__file__).resolve().parents[2] / "README.md"
URL = "http://localhost:8000/v1"
_RECIPE = re.compile(r"<!-- recipe: ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL)

# recipe -> (module it needs, LLM calls it makes)
EXPECTED = {
    "langchain": ("langchain_openai", 1),
    "langgraph": ("langgraph", 2),
    "openai-agents": ("agents", 1),
    "openai-agents-responses": ("agents", 1),
    "pydantic-ai": ("pydantic_ai", 1),
    "httpx": ("httpx", 2),
}


def recipes() -> dict[str, str]:
    return dict(_RECIPE.findall(README.read_text(encoding="utf-8")))


def test_the_readme_has_each_recipe() -> None:
    assert sorted(recipes()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_recipe_runs_as_one_program_that_the_server_ends(name: str, tmp_path: Path) -> None:
    module, calls = EXPECTED[name]
    pytest.importorskip(module)
    with echo_server(model="m") as (url, engine):
        script = tmp_path / "recipe.py"
        script.write_text(recipes()[name].replace(URL, url), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip()
        programs = {r.program.program_id if r.program else None for r in engine.requests}
        assert len(engine.requests) >= calls
        assert len(programs) == 1 and None not in programs
        assert programs <= set(engine.ended_programs)
