"""The public surface: everything in agentrt.__all__ resolves; `import agentrt` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import agentrt


def test_every_public_name_resolves() -> None:
    for name in agentrt.__all__:
        if name == "serve_in_process":
            continue  # needs the server extra; covered by the in-process tests
        assert getattr(agentrt, name) is not None, name


def test_import_agentrt_loads_no_heavy_module() -> None:
    code = (
        "import sys, json, agentrt\n"
        "print(json.dumps([m for m in ('openai', 'torch', 'transformers', 'starlette', 'httpx', 'anyio')"
        " if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout) == []


def test_the_clients_load_on_first_use() -> None:
    code = "import sys, agentrt\nagentrt.OpenAI\nprint('openai' in sys.modules, 'torch' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["True", "False"]


def test_unknown_attributes_raise_attribute_error() -> None:
    try:
        agentrt.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
