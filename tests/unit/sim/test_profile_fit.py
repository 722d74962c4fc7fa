"""Engine profiles (shipped files, TOML round trip) and fitting the step-time terms."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec
import pytest

from agentrt.cli import main
from agentrt.protocol.engine import StepRecord
from agentrt.sim.fit import fit_steps
from agentrt.sim.profile import (
    EngineProfile,
    dump_profile,
    load_profile,
    shipped_profiles,
    with_settings,
)


def test_shipped_a100_profile_loads_with_public_figures() -> None:
    assert "a100-llama3-8b" in shipped_profiles()
    p = load_profile("a100-llama3-8b")
    assert p.block_size == 16 and p.max_batch_size == 256
    # 128 KiB of KV per token: ~400k tokens fit in ~53 GB.
    assert 380_000 <= p.kv_capacity_tokens <= 420_000
    # A full decode batch at 1k context: tens of milliseconds, thousands of tokens/s.
    step = p.step_time(0, 256, 256 * 1000)
    assert 0.03 < step < 0.1


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown engine profile 'nope'"):
        load_profile("nope")


def test_profile_round_trips_through_toml(tmp_path: Path, small_profile: EngineProfile) -> None:
    path = tmp_path / "p.toml"
    path.write_text(dump_profile(small_profile, "a header\nover two lines"))
    assert path.read_text().startswith("# a header\n# over two lines\n")
    assert load_profile(path) == small_profile


def test_invalid_profile_values_are_rejected(small_profile: EngineProfile) -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        msgspec.structs.replace(small_profile, max_batch_tokens=4)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(
            {**msgspec.to_builtins(small_profile), "prefill_token_s": -1.0}, EngineProfile
        )


def test_a_profile_field_can_be_changed_for_one_run(small_profile: EngineProfile) -> None:
    assert with_settings(small_profile, {}) is small_profile
    changed = with_settings(small_profile, {"max_batch_size": 4, "prefix_caching": False})
    assert changed.max_batch_size == 4 and not changed.prefix_caching
    assert changed.name == f"{small_profile.name} (max_batch_size=4, prefix_caching=False)"
    with pytest.raises(ValueError, match="not an engine profile field: batch"):
        with_settings(small_profile, {"batch": 4})
    with pytest.raises(ValueError, match="invalid profile setting"):
        with_settings(small_profile, {"max_batch_size": "many"})
    with pytest.raises(ValueError, match="invalid profile setting"):
        with_settings(small_profile, {"max_batch_tokens": 1})  # below the batch size


def _synthetic_steps(truth: dict[str, float], n: int, noise: float, seed: int) -> list[StepRecord]:
    rng = random.Random(seed)
    steps = []
    for _ in range(n):
        prefill = rng.choice([0, 0, rng.randint(1, 2048)])
        decode = rng.randint(0 if prefill else 1, 64)
        kv = decode * rng.randint(16, 2048) + prefill
        seconds = (
            truth["step_overhead_s"]
            + truth["prefill_token_s"] * prefill
            + truth["decode_seq_s"] * decode
            + truth["kv_token_s"] * kv
        )
        steps.append(StepRecord(prefill, decode, kv, seconds * (1 + rng.gauss(0, noise))))
    return steps


TRUTH = {"step_overhead_s": 0.02, "prefill_token_s": 3e-4, "decode_seq_s": 2e-3, "kv_token_s": 5e-7}


def test_fit_recovers_known_coefficients_from_noisy_steps() -> None:
    truth = TRUTH
    result = fit_steps(_synthetic_steps(truth, 400, noise=0.02, seed=3))
    for term, value in truth.items():
        assert result.coefficients[term] == pytest.approx(value, rel=0.1), term
    assert result.r2 > 0.98


def test_fit_pins_an_absent_term_to_zero_instead_of_going_negative() -> None:
    truth = {
        "step_overhead_s": 0.02,
        "prefill_token_s": 3e-4,
        "decode_seq_s": 2e-3,
        "kv_token_s": 0.0,
    }
    result = fit_steps(_synthetic_steps(truth, 300, noise=0.03, seed=4))
    assert all(v >= 0 for v in result.coefficients.values())
    assert result.coefficients["kv_token_s"] < 5e-8


def test_fit_needs_enough_steps() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        fit_steps([StepRecord(1, 1, 1, 0.1)])


def test_sim_fit_command_writes_a_loadable_profile(tmp_path: Path) -> None:
    truth = {
        "step_overhead_s": 0.03,
        "prefill_token_s": 1e-3,
        "decode_seq_s": 4e-3,
        "kv_token_s": 1e-6,
    }
    steps = _synthetic_steps(truth, 200, noise=0.01, seed=5)
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "steps": [msgspec.to_builtins(s) for s in steps],
                "device": "cpu",
                "engine": {"kv_blocks": 1234, "max_batch_size": 32, "ignored": 1},
                "swap": {"blocks": 8, "batched_seconds": 0.0016, "tokens": 128},
            }
        )
    )
    out = tmp_path / "cpu-test.toml"
    assert (
        main(
            [
                "sim",
                "fit",
                str(bench),
                "-o",
                str(out),
                "--set",
                "max_model_len=2048",
                "--set",
                "prefix_caching=false",
            ]
        )
        == 0
    )
    profile = load_profile(out)
    assert profile.name == "cpu-test"
    assert profile.kv_blocks == 1234 and profile.max_batch_size == 32
    assert profile.device == "cpu"  # the bench's: the scheduler's "auto" unit resolves for it
    assert profile.decode_seq_s == pytest.approx(4e-3, rel=0.05)
    assert profile.swap_block_s == pytest.approx(1e-4)
    assert profile.max_model_len == 2048 and profile.prefix_caching is False
    assert profile.block_size == load_profile("a100-llama3-8b").block_size  # from --base
    assert out.read_text().startswith(
        "# Fitted by `agentrt sim fit bench.json` from 200 engine steps"
    )


def test_sim_fit_rejects_unknown_settings(tmp_path: Path) -> None:
    steps = _synthetic_steps(
        {
            "step_overhead_s": 0.01,
            "prefill_token_s": 1e-4,
            "decode_seq_s": 1e-3,
            "kv_token_s": 1e-7,
        },
        50,
        0.01,
        6,
    )
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"steps": [msgspec.to_builtins(s) for s in steps]}))
    with pytest.raises(SystemExit, match="not a profile capacity: colour"):
        main(["sim", "fit", str(bench), "-o", str(tmp_path / "x.toml"), "--set", "colour=1"])
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        main(["sim", "fit", str(bench), "-o", str(tmp_path / "x.toml"), "--set", "kv_blocks"])


def test_the_cpu_profile_fitted_from_our_engine_is_shipped() -> None:
    p = load_profile("cpu-smollm2-135m")
    assert "cpu-smollm2-135m" in shipped_profiles()
    # Fitted from a real engine run: every step term is positive and a decode step of one
    # sequence costs tens of milliseconds on 2 CPU cores, not microseconds as on an A100.
    assert p.step_overhead_s > 0 and p.decode_seq_s > 0 and p.prefill_token_s > 0
    assert 0.005 < p.step_overhead_s + p.decode_seq_s < 0.5
    assert (p.device, load_profile("a100-llama3-8b").device) == ("cpu", "cuda")


def test_step_moments_add_up_across_engines_and_runs() -> None:
    from agentrt.protocol.engine import StepMoments
    from agentrt.sim.fit import fit_moments

    truth = TRUTH
    steps = _synthetic_steps(truth, 400, noise=0.02, seed=5)
    first, second = StepMoments.total(steps[1::2]), StepMoments.total(steps[::2])
    both = first.plus(second)
    whole = fit_steps(steps)
    merged = fit_moments(both)
    assert merged.steps == 400
    for term in truth:
        assert merged.coefficients[term] == pytest.approx(whole.coefficients[term], rel=1e-6)
    assert merged.r2 == pytest.approx(whole.r2, rel=1e-6)
    # A run's steps are the difference of two snapshots of the same sums.
    assert fit_moments(both.minus(second)).coefficients == pytest.approx(
        fit_moments(first).coefficients
    )
