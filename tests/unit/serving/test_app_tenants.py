"""Each tenant has its own share of the server: one tenant's flood hurts only itself."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.unit.serving.inprocess_clients import raw_client, serving, sync_client

from agentrt.config import ConfigError
from agentrt.protocol.programs import ProgramStart
from agentrt.serving.http.auth import load_tenant_limits
from agentrt.serving.http.programs import ProgramDirectory
from agentrt.testing.echo import EchoEngine

KEYS = '[keys]\n"sk-alpha" = "alpha"\n"sk-beta" = "beta"\n'
LONG = "a b c d e f g h"


def test_a_tenant_that_floods_the_program_table_evicts_only_its_own_programs() -> None:
    programs = ProgramDirectory(max_programs=5)
    programs.start("alpha", ProgramStart(program_id="idle"))
    for i in range(6):
        programs.start("beta", ProgramStart(program_id=f"flood-{i}"))
    assert programs.get("alpha", "idle") is not None
    assert programs.get("beta", "flood-0") is None  # beta's oldest made room for its newest
    assert len(programs.list("beta")) == 5


def stream_in_background(
    app: Any, key: str, started: threading.Event, results: list[Any]
) -> threading.Thread:
    def run() -> None:
        try:
            stream = sync_client(app, api_key=key).completions.create(
                model="echo", prompt=LONG, stream=True
            )
            for _ in stream:
                started.set()
            results.append(200)
        except openai.RateLimitError:
            started.set()
            results.append(429)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_tenant_that_floods_the_server_leaves_the_others_their_share(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    engine = EchoEngine(token_delay=0.1)
    with serving(
        engine, api_key_file=str(keys), max_concurrent_requests=4, max_queued_requests=0
    ) as (app, _):
        results: list[Any] = []
        events = [threading.Event() for _ in range(4)]
        threads = [stream_in_background(app, "sk-beta", e, results) for e in events]
        assert all(e.wait(10) for e in events)
        alpha = raw_client(app, {"authorization": "Bearer sk-alpha"}).post(
            "/v1/completions", json={"model": "echo", "prompt": "hi"}
        )
        for t in threads:
            t.join(10)
    assert alpha.status_code == 200, alpha.text
    assert sorted(results) == [200, 200, 429, 429]  # beta got its half of the 4 slots


def test_the_key_file_sets_a_tenants_share(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        KEYS + "[tenants.alpha]\nmax_concurrent_requests = 1\nmax_queued_requests = 0\n"
    )
    with serving(EchoEngine(token_delay=0.1), api_key_file=str(keys)) as (app, _):
        started = threading.Event()
        results: list[Any] = []
        thread = stream_in_background(app, "sk-alpha", started, results)
        assert started.wait(10)
        second = raw_client(app, {"authorization": "Bearer sk-alpha"}).post(
            "/v1/completions", json={"model": "echo", "prompt": "hi"}
        )
        beta = raw_client(app, {"authorization": "Bearer sk-beta"}).post(
            "/v1/completions", json={"model": "echo", "prompt": "hi"}
        )
        thread.join(10)
    assert second.status_code == 429
    assert beta.status_code == 200
    assert results == [200]


def test_a_malformed_tenants_table_is_a_clear_config_error(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS + "[tenants.alpha]\nmax_concurent_requests = 1\n")
    with pytest.raises(ConfigError, match="max_concurent_requests"):
        load_tenant_limits(keys)
