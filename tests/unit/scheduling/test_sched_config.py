"""SchedulerConfig / BalancerConfig: defaults per unit, derived queues, validation, TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt.config import ConfigError, load_config
from agentrt.scheduling import BalancerConfig, SchedulerConfig


def test_defaults_are_in_model_time_with_exponential_queues() -> None:
    config = SchedulerConfig()
    assert (config.policy, config.service_unit, config.num_queues) == ("atlas", "auto", 8)
    assert config.unit == "time"  # until an engine resolves it for its device
    assert config.boundaries == [0.5 * 2**i for i in range(7)]
    assert config.quanta == [0.5 * 2**i for i in range(8)]
    assert config.floor == 0.025
    assert config.honor_request_priority is False


def test_token_unit_has_its_own_defaults() -> None:
    config = SchedulerConfig(service_unit="tokens")
    assert config.boundaries[0] == 256 and config.quanta[0] == 256 and config.floor == 1


def test_auto_unit_is_tokens_on_a_cpu_and_time_on_a_gpu() -> None:
    auto = SchedulerConfig(policy="plas")
    on_cpu = auto.on_device("cpu")
    assert (on_cpu.service_unit, on_cpu.policy, on_cpu.boundaries[0]) == ("tokens", "plas", 256)
    assert auto.on_device("cuda:1").service_unit == "time"
    assert auto.on_device("cuda").boundaries[0] == 0.5
    for unit in ("time", "tokens"):  # a unit set in the config is kept on any device
        config = SchedulerConfig(service_unit=unit)
        assert config.on_device("cpu") is config and config.on_device("cuda:0") is config


def test_explicit_knobs_override_the_unit_defaults() -> None:
    config = SchedulerConfig(
        num_queues=3, first_boundary=10, boundary_growth=4, first_quantum=1, quantum_growth=3
    )
    assert config.boundaries == [10, 40]
    assert config.quanta == [1, 3, 9]


def test_one_queue_is_allowed() -> None:
    assert SchedulerConfig(num_queues=1).boundaries == []


@pytest.mark.parametrize(
    "bad",
    [
        {"num_queues": 0},
        {"boundary_growth": 1.0},
        {"quantum_growth": 0.5},
        {"first_boundary": 0},
        {"first_quantum": -1},
        {"starvation_floor": float("inf")},
        {"beta": 0},
        {"program_ttl_s": 0},
        {"max_programs": 0},
        {"policy": "sjf"},
        {"service_unit": "flops"},
    ],
)
def test_invalid_values_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_config(SchedulerConfig, overrides=bad)


def test_loads_from_a_toml_table(tmp_path: Path) -> None:
    path = tmp_path / "agentrt.toml"
    path.write_text(
        '[scheduler]\npolicy = "plas"\nservice_unit = "tokens"\nnum_queues = 4\nbeta = 16\n'
        '[balancer]\npolicy = "round_robin"\nlocality_threshold = 4096\n'
    )
    config = load_config(SchedulerConfig, path, "scheduler", {"beta": 4.0})
    assert (config.policy, config.service_unit, config.num_queues, config.beta) == (
        "plas",
        "tokens",
        4,
        4.0,
    )
    balancer = load_config(BalancerConfig, path, "balancer")
    assert (balancer.policy, balancer.locality_threshold) == ("round_robin", 4096)


def test_unknown_toml_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "agentrt.toml"
    path.write_text("[scheduler]\nbeat = 3\n")
    with pytest.raises(ConfigError, match="beat"):
        load_config(SchedulerConfig, path, "scheduler")


def test_balancer_threshold_must_not_be_negative() -> None:
    with pytest.raises(ConfigError):
        load_config(BalancerConfig, overrides={"locality_threshold": -1})
