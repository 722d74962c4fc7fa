"""API keys and tenants: everything but /health needs a key; tenants never see each other's programs."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from tests.unit.serving.inprocess_clients import raw_client, serving, sync_client

from agentrt.config import ConfigError
from agentrt.serving.http.auth import KeyRing, load_key_file

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "keys.toml"
    path.write_text('[keys]\n"sk-alpha" = "alpha"\n"sk-beta" = "beta"\n')
    return str(path)


def test_without_keys_configured_the_server_is_open() -> None:
    with serving() as (app, _):
        assert raw_client(app).get("/v1/models").status_code == 200


def test_a_missing_or_wrong_key_is_a_401_and_health_stays_open() -> None:
    with serving(api_keys=["sk-right"]) as (app, engine):
        http = raw_client(app)
        missing = http.get("/v1/models")
        wrong = http.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": USER},
            headers={"authorization": "Bearer sk-wrong"},
        )
        metrics = http.get("/metrics")
        health = http.get("/health")
        with pytest.raises(openai.AuthenticationError):
            sync_client(app, api_key="sk-wrong").models.list()
        ok = sync_client(app, api_key="sk-right").chat.completions.create(
            model="echo", messages=USER
        )
        by_header = http.get("/v1/models", headers={"x-api-key": "sk-right"})
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert missing.json()["error"]["message"] == "missing API key"
    assert wrong.json()["error"] == {
        "message": "invalid API key",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert missing.headers["www-authenticate"] == "Bearer"
    assert health.status_code == 200
    assert ok.choices[0].message.content == "hi"
    assert by_header.status_code == 200
    assert len(engine.requests) == 1


def test_a_key_file_maps_keys_to_tenants_and_calls_carry_the_tenant(key_file: str) -> None:
    with serving(api_key_file=key_file) as (app, engine):
        for key in ("sk-alpha", "sk-beta"):
            sync_client(app, api_key=key).chat.completions.create(
                model="echo", messages=USER, extra_headers={"x-agentrt-program": "shared-name"}
            )
    tags = [r.program for r in engine.requests]
    assert [(t.tenant, t.program_id) for t in tags if t] == [
        ("alpha", "alpha/shared-name"),
        ("beta", "beta/shared-name"),
    ]


def test_one_tenant_cannot_see_end_or_touch_another_tenants_program(key_file: str) -> None:
    with serving(api_key_file=key_file) as (app, engine):
        alpha = raw_client(app, {"authorization": "Bearer sk-alpha"})
        beta = raw_client(app, {"authorization": "Bearer sk-beta"})
        assert (
            alpha.post(
                "/v1/programs", json={"program_id": "secret-plan", "name": "plan"}
            ).status_code
            == 200
        )
        seen_by_beta = beta.get("/v1/programs/secret-plan")
        ended_by_beta = beta.delete("/v1/programs/secret-plan")
        listed_by_beta = beta.get("/v1/programs").json()["data"]
        # beta's calls under the same id land in beta's own program, not alpha's
        sync_client(app, api_key="sk-beta").chat.completions.create(
            model="echo", messages=USER, extra_headers={"x-agentrt-program": "secret-plan"}
        )
        alpha_view = alpha.get("/v1/programs/secret-plan").json()
        listed_by_alpha = alpha.get("/v1/programs").json()["data"]
    assert (
        seen_by_beta.status_code == 404
        and seen_by_beta.json()["error"]["code"] == "program_not_found"
    )
    assert ended_by_beta.status_code == 404
    assert listed_by_beta == []
    assert alpha_view["id"] == "secret-plan" and alpha_view.get("num_calls", 0) == 0
    assert [p["id"] for p in listed_by_alpha] == ["secret-plan"]
    assert "alpha/secret-plan" in engine.programs  # still running: beta could not end it


def test_key_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[keys]\n"sk-1" = "a/b"\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="without '/'"):
        load_key_file(bad)
    with pytest.raises(ConfigError, match="non-empty \\[keys\\]"):
        load_key_file(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key_file(tmp_path / "missing.toml")


def test_flag_keys_belong_to_the_default_tenant() -> None:
    ring = KeyRing.from_config(["sk-1"], None)
    assert ring.enabled
    assert ring.tenant("sk-1") == "default"
    assert ring.tenant("sk-2") is None


def test_reusing_another_tenants_call_id_cannot_abort_its_call(key_file: str) -> None:
    from agentrt.testing.echo import EchoEngine

    engine = EchoEngine(token_delay=0.02)
    with serving(engine, api_key_file=key_file) as (app, _):
        alpha = sync_client(app, api_key="sk-alpha")
        text = " ".join(f"w{i}" for i in range(10))
        stream = alpha.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": text}],
            stream=True,
            extra_headers={"x-agentrt-program": "p", "x-agentrt-call": "c-1"},
        )
        chunks = iter(stream)
        next(chunks)
        # beta sends the same call id while alpha's call runs: its own call, in its own namespace
        beta_reply = sync_client(app, api_key="sk-beta").chat.completions.create(
            model="echo",
            messages=USER,
            extra_headers={"x-agentrt-program": "p", "x-agentrt-call": "c-1"},
        )
        # alpha repeating its own in-flight id is refused, and the running call is not aborted
        duplicate_status = (
            raw_client(
                app,
                {
                    "authorization": "Bearer sk-alpha",
                    "x-agentrt-program": "p",
                    "x-agentrt-call": "c-1",
                },
            )
            .post("/v1/chat/completions", json={"model": "echo", "messages": USER})
            .status_code
        )
        rest = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert beta_reply.choices[0].message.content == "hi"
    assert beta_reply.model_extra["agentrt"]["call_id"] == "c-1"
    assert duplicate_status == 400
    assert rest.endswith("w9")
    assert engine.aborted == []
    assert sorted(engine.finished) == ["alpha/c-1", "beta/c-1"]
