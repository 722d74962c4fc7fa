"""/v1/programs: start, inspect (calls, service, wait), list, end; the SDK's lifecycle calls work against it."""

from __future__ import annotations

from tests.unit.serving.inprocess_clients import raw_client, serving, sync_client

import agentrt
from agentrt.protocol.engine import ToolSignals
from agentrt.protocol.programs import ToolEvent
from agentrt.serving.inprocess import AppRunner
from agentrt.testing.echo import EchoEngine

USER = [{"role": "user", "content": "one two three"}]


def test_the_program_lifecycle_over_http() -> None:
    with serving(EchoEngine(token_delay=0.001)) as (app, engine):
        http = raw_client(app)
        started = http.post(
            "/v1/programs", json={"program_id": "p1", "name": "research", "metadata": {"k": "v"}}
        )
        client = sync_client(app)
        for i in range(3):
            client.chat.completions.create(
                model="echo",
                messages=USER,
                extra_headers={
                    "x-agentrt-program": "p1",
                    "x-agentrt-thread": "main",
                    "x-agentrt-call": f"c{i}",
                },
            )
        inspected = http.get("/v1/programs/p1").json()
        listed = http.get("/v1/programs").json()
        ended = http.delete("/v1/programs/p1")
        after = http.get("/v1/programs/p1")
        again = http.delete("/v1/programs/p1")
        metrics = http.get("/metrics").text
    assert started.status_code == 200
    assert started.json()["id"] == "p1" and started.json()["name"] == "research"
    assert engine.programs == {} and engine.ended_programs == ["p1"]
    assert inspected["num_calls"] == 3 and inspected.get("live_calls", 0) == 0
    assert [c["id"] for c in inspected["calls"]] == ["c0", "c1", "c2"]
    assert all(
        c["state"] == "finished" and c["service"] > 0 and c["thread_id"] == "main"
        for c in inspected["calls"]
    )
    assert abs(inspected["service"] - sum(c["service"] for c in inspected["calls"])) < 1e-9
    assert inspected["wait_seconds"] >= 0
    assert [p["id"] for p in listed["data"]] == ["p1"]
    assert ended.status_code == 200 and ended.json()["state"] == "ended"
    assert after.status_code == 404 and again.status_code == 404
    assert "agentrt:program_e2e_latency_seconds_count 1.0" in metrics
    assert "agentrt:program_calls_count 1.0" in metrics


def test_a_program_appears_with_its_first_call_even_without_post() -> None:
    with serving() as (app, _):
        sync_client(app).chat.completions.create(
            model="echo", messages=USER, extra_headers={"x-agentrt-program": "implicit"}
        )
        info = raw_client(app).get("/v1/programs/implicit").json()
    assert info["num_calls"] == 1


def test_bad_program_bodies_are_400s() -> None:
    with serving() as (app, _):
        http = raw_client(app)
        no_id = http.post("/v1/programs", json={"name": "x"})
        bad_id = http.post("/v1/programs", json={"program_id": "has spaces"})
    assert no_id.status_code == 400
    assert bad_id.status_code == 400 and bad_id.json()["error"]["param"] == "program_id"


def test_what_a_program_stores_is_bounded() -> None:
    """A server keeps up to max_programs programs: each one's name and labels stay small."""
    many = {f"k{i}": "v" for i in range(33)}
    with serving() as (app, _):
        http = raw_client(app)
        long_name = http.post("/v1/programs", json={"program_id": "p", "name": "n" * 257})
        too_many = http.post("/v1/programs", json={"program_id": "p", "metadata": many})
        long_value = http.post(
            "/v1/programs", json={"program_id": "p", "metadata": {"k": "v" * 513}}
        )
        first = http.post(
            "/v1/programs", json={"program_id": "q", "metadata": dict(list(many.items())[:20])}
        )
        # Labels add up over repeated starts: the 13 new ones would make 33.
        more = http.post(
            "/v1/programs", json={"program_id": "q", "metadata": dict(list(many.items())[20:])}
        )
        kept = http.get("/v1/programs/q").json()
    assert [r.status_code for r in (long_name, too_many, long_value)] == [400, 400, 400]
    assert long_name.json()["error"]["param"] == "name"
    assert too_many.json()["error"]["param"] == "metadata"
    assert first.status_code == 200
    assert more.status_code == 400 and more.json()["error"]["param"] == "metadata"
    assert len(kept["metadata"]) == 20


def test_the_sdk_announces_and_ends_programs_and_reports_tool_time() -> None:
    engine = EchoEngine()
    with serving(engine) as (app, _):
        client = agentrt.OpenAI(app=app)

        @agentrt.tool
        def lookup() -> str:
            import time

            time.sleep(0.01)
            return "found"

        @agentrt.program
        def agent() -> str:
            client.chat.completions.create(model="echo", messages=USER)
            lookup()
            client.chat.completions.create(model="echo", messages=USER)
            program = agentrt.current_program()
            assert program is not None
            info = client.get(f"/programs/{program.program_id}", cast_to=dict)
            return str(info["interrupt_seconds"]) + "|" + str(info["num_calls"])

        interrupt, calls = agent().split("|")
        AppRunner.for_app(app).close()
    assert calls == "2"
    assert float(interrupt) >= 0.01
    assert len(engine.ended_programs) == 1


class ToolListeningEngine(EchoEngine):
    """An echo engine that hears tool signals (``ToolSignals``), recording them."""

    def __init__(self) -> None:
        super().__init__()
        self.tool_events: list[tuple[str, str, str | None]] = []

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        self.tool_events.append((program_id, event.state, event.tool))


def test_tool_signals_reach_an_engine_that_listens_and_bad_ones_are_400s() -> None:
    engine = ToolListeningEngine()
    with serving(engine) as (app, _):
        http = raw_client(app)
        start = http.post("/v1/programs/p1/tool", json={"state": "start", "tool": "search"})
        end = http.post("/v1/programs/p1/tool", json={"state": "end", "thread_id": "0"})
        unknown = http.post("/v1/programs/never-seen/tool", json={"state": "end"})
        bad_state = http.post("/v1/programs/p1/tool", json={"state": "paused"})
        bad_field = http.post("/v1/programs/p1/tool", json={"state": "end", "extra": 1})
        bad_id = http.post("/v1/programs/bad%20id/tool", json={"state": "end"})
    assert (start.status_code, end.status_code, unknown.status_code) == (204, 204, 204)
    assert engine.tool_events == [
        ("p1", "start", "search"),
        ("p1", "end", None),
        ("never-seen", "end", None),
    ]
    for reply in (bad_state, bad_field, bad_id):
        assert reply.status_code == 400
        assert reply.json()["error"]["type"] == "invalid_request_error"


def test_tool_signals_to_an_engine_that_does_not_listen_are_accepted() -> None:
    with serving() as (app, engine):
        reply = raw_client(app).post("/v1/programs/p1/tool", json={"state": "start"})
    assert reply.status_code == 204 and not isinstance(engine, ToolSignals)
