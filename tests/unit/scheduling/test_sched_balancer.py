"""The load balancer: round robin, least used, and Autellix's locality rule with pinning."""

from __future__ import annotations

import pytest

from agentrt.scheduling import Balancer, BalancerConfig, NoEngineAvailable, ProcessTable


def balancer(policy: str, engines: str = "abc", threshold: int = 2048) -> Balancer:
    config = BalancerConfig(policy=policy, locality_threshold=threshold)  # type: ignore[arg-type]
    return Balancer(config, engines=list(engines))


def test_round_robin_takes_engines_in_turn() -> None:
    lb = balancer("round_robin")
    assert [lb.route("p", 10, 0.0) for _ in range(7)] == list("abcabca")


def test_least_used_picks_the_engine_with_fewest_live_calls() -> None:
    lb = balancer("least_used")
    assert [lb.route(f"p{i}", 10, 0.0) for i in range(3)] == ["a", "b", "c"]
    lb.release("b")
    assert lb.route("q", 10, 0.0) == "b"
    assert [lb.load(e) for e in "abc"] == [1, 1, 1]
    lb.release("a")
    lb.release("a")  # an extra release does not go negative
    assert lb.load("a") == 0


def test_locality_sends_short_calls_to_the_least_used_engine_without_pinning() -> None:
    lb = balancer("locality")
    assert [lb.route("p", 2048, 0.0) for _ in range(3)] == ["a", "b", "c"]
    entry = lb.table.get("p")
    assert entry is None or entry.engine_id is None


def test_locality_pins_a_programs_long_calls_on_first_use_and_keeps_them_there() -> None:
    lb = balancer("locality")
    lb.route("other", 10, 0.0)  # a is busier
    assert lb.route("p", 5000, 0.0) == "b"  # least used at first use
    for _ in range(3):
        assert lb.route("p", 3000, 1.0) == "b"  # sticky, whatever the load
    assert lb.table.get("p").engine_id == "b"  # type: ignore[union-attr]
    assert lb.route("p", 100, 1.0) == "c"  # short calls still go to the least used


def test_locality_threshold_is_configurable() -> None:
    lb = balancer("locality", threshold=100)
    assert lb.route("p", 101, 0.0) == "a"
    lb.route("x", 1, 0.0)
    assert lb.route("p", 101, 0.0) == "a"


def test_engine_failure_unpins_its_programs_and_they_re_route() -> None:
    lb = balancer("locality", engines="ab")
    assert lb.route("p", 5000, 0.0) == "a"
    assert lb.route("q", 5000, 0.0) == "b"
    assert lb.engine_failed("a") == ["p"]
    assert lb.engines == ["b"]
    assert lb.route("p", 5000, 1.0) == "b"
    assert lb.table.get("p").engine_id == "b"  # type: ignore[union-attr]


def test_engines_can_be_added_and_removed() -> None:
    lb = balancer("least_used", engines="a")
    lb.route("p", 10, 0.0)
    lb.add_engine("b")
    assert lb.route("q", 10, 0.0) == "b"
    with pytest.raises(ValueError):
        lb.add_engine("b")
    lb.remove_engine("a")
    lb.release("a")  # a late release for a removed engine is ignored
    assert lb.engines == ["b"]


def test_no_engine_is_a_clear_error() -> None:
    lb = balancer("locality", engines="")
    with pytest.raises(NoEngineAvailable):
        lb.route("p", 10, 0.0)


def test_untagged_calls_go_to_the_least_used_engine() -> None:
    lb = balancer("locality")
    lb.route("p", 10, 0.0)
    assert lb.route(None, 10_000, 0.0) == "b"


def test_pins_live_in_the_shared_process_table() -> None:
    table = ProcessTable()
    lb = Balancer(BalancerConfig(), engines=["a", "b"], table=table)
    lb.route("p", 9000, 0.0)
    assert table.get("p").engine_id == "a"  # type: ignore[union-attr]
    table.end("p", 1.0)
    assert lb.route("p", 9000, 2.0) == "b"  # a fresh program: pinned anew, to the least used


def test_pins_are_dropped_with_their_engine_and_with_their_program() -> None:
    lb = balancer("locality", engines="ab", threshold=0)
    assert [lb.route(p, 1, 0.0) for p in "pqr"] == ["a", "b", "a"]
    assert lb.remove_engine("a") == ["p", "r"]
    assert lb.table.get("q").engine_id == "b"  # type: ignore[union-attr]
    assert lb.remove_engine("b") == ["q"]
    assert all(e.engine_id is None for e in lb.table.programs())
    lb.add_engine("c")
    assert lb.route("x", 1, 1.0) == "c"
    lb.table.end("x", 2.0)
    assert lb.remove_engine("c") == []


def test_a_call_goes_back_to_the_engine_that_retains_its_programs_context() -> None:
    lb = balancer("locality")
    lb.table.start("p", 0.0)
    assert lb.route("p", 10, 0.0) == "a"
    lb.release("a")
    lb.route("busy", 10, 0.0)  # a is now the busiest engine
    lb.retained("p", "a", until=5.0)
    assert lb.route("p", 10, 1.0) == "a"  # a short call, sent back to its prefix anyway
    lb.release("a")
    assert lb.route("p", 10, 1.0) == "b"  # taken by one call: then the usual rule


def test_a_retained_context_past_its_ttl_or_on_a_lost_engine_is_not_followed() -> None:
    lb = balancer("locality")
    lb.table.start("p", 0.0)
    lb.route("busy", 10, 0.0)
    lb.retained("p", "a", until=5.0)
    assert lb.route("p", 10, 6.0) == "b"  # expired
    lb.release("b")
    lb.retained("p", "c", until=50.0)
    lb.remove_engine("c")
    assert lb.route("p", 10, 7.0) == "b"  # c left: the least used of a and b
    lb.retained("ended", "a", until=50.0)  # no entry: ignored
    assert lb.table.get("ended") is None


def test_a_program_in_a_tool_goes_back_to_its_retained_context_past_the_ttl() -> None:
    lb = balancer("locality")
    lb.table.start("p", 0.0)
    lb.table.start("q", 0.0)
    lb.route("busy", 10, 0.0)  # a is the busiest engine
    lb.retained("p", "a", until=5.0)
    lb.hold_retained("p")  # p's tool started: a holds p's pin until p calls again
    lb.hold_retained("q")  # nothing retained for q: nothing to hold
    lb.hold_retained("ended")  # no entry: ignored
    assert lb.route("p", 10, 500.0) == "a"
    lb.release("a")
    assert lb.route("q", 10, 500.0) == "b"
    assert lb.route("p", 10, 500.0) == "c"  # the hold went with the call that took it: least used


def test_only_the_locality_policy_follows_retained_contexts() -> None:
    lb = balancer("least_used")
    lb.table.start("p", 0.0)
    lb.route("busy", 10, 0.0)
    lb.retained("p", "a", until=5.0)
    assert lb.route("p", 10, 1.0) == "b"
