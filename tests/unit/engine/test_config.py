"""EngineConfig: defaults, validation, and loading from TOML with a nested scheduler table."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from agentrt.config import ConfigError, load_config
from agentrt.engine.config import EngineConfig


def test_loads_from_toml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(
        '[engine]\nblock_size = 32\npreemption_mode = "swap"\nkv_cache_memory = 1073741824\n'
        'quantization = "int4"\n'
        '[engine.scheduler]\npolicy = "plas"\nservice_unit = "tokens"\n'
    )
    config = load_config(EngineConfig, path, "engine", {"max_num_seqs": 8, "dtype": None})
    assert config.block_size == 32 and config.preemption_mode == "swap"
    assert config.kv_cache_memory == 1073741824 and config.max_num_seqs == 8
    assert config.scheduler.policy == "plas" and config.dtype == "auto"
    assert config.quantization == "int4" and config.lean_decoder


@pytest.mark.parametrize(
    "bad",
    [
        {"block_size": 0},
        {"max_num_batched_tokens": 0},
        {"kv_cache_memory": 0},
        {"num_kv_blocks": 0},
        {"num_threads": 0},
        {"preemption_mode": "drop"},
        {"dtype": "int8"},
        {"quantization": "int3"},
        {"quantization": "int8", "lean_decoder": False},
        {"no_such_field": 1},
        {"scheduler": {"policy": "sjf"}},
    ],
)
def test_bad_values_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, EngineConfig)


def test_load_config_reports_bad_values_as_config_errors() -> None:
    with pytest.raises(ConfigError, match="block_size"):
        load_config(EngineConfig, overrides={"block_size": 0})


def test_cuda_graphs_need_compile_and_a_cuda_device() -> None:
    assert EngineConfig().cuda_graphs is None  # the runner decides: on with compile on CUDA
    with pytest.raises(ConfigError, match="needs compile = true"):
        EngineConfig(cuda_graphs=True, device="cuda")
    with pytest.raises(ConfigError, match="needs a CUDA device, got 'cpu'"):
        EngineConfig(cuda_graphs=True, compile=True)
    assert EngineConfig(cuda_graphs=True, compile=True, device="cuda:1").cuda_graphs
    assert EngineConfig(cuda_graphs=False).cuda_graphs is False  # off is valid anywhere
    with pytest.raises(ConfigError, match="cuda_graphs"):
        load_config(EngineConfig, overrides={"cuda_graphs": True, "compile": True})
