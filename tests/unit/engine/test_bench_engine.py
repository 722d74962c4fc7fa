"""``agentrt bench engine --quick`` runs every section end to end and writes the JSON it promises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentrt.cli import main
from agentrt.engine.loader import dtype_reason, resolve_dtype


def test_quick_bench_writes_every_section(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    assert (
        main(["bench", "engine", "--model", str(tiny_folder), "--quick", "--json", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    t = result["throughput"]
    assert t["prompts"] == 6 and t["output_len"] == 8
    assert t["engine_tokens"] == t["baseline_tokens"] == 6 * 8
    assert t["ratio"] == t["engine_tok_s"] / t["baseline_tok_s"]
    assert result["batched_decode"]["batch"] == 4 and result["single_stream"]["batch"] == 1
    single = result["single_stream"]
    assert single["ratio"] == single["tok_s"] / single["baseline_tok_s"]
    for decode in (result["batched_decode"], result["single_stream"]):
        assert decode["steps"] >= 1 and decode["tok_s"] > 0 and decode["roofline_fraction"] > 0
        assert decode["best_tok_s"] >= decode["tok_s"]
    swap = result["swap"]
    assert swap["tokens"] == 128 and swap["blocks"] == 8 and swap["speedup"] > 0
    steps = result["steps"]
    assert {tuple(sorted(s)) for s in steps} == {
        ("decode_seqs", "kv_tokens", "prefill_tokens", "seconds")
    }
    # The offline section prefills every prompt token once and decodes the rest.
    assert sum(s["prefill_tokens"] for s in steps) >= t["prompt_tokens"]
    assert any(s["decode_seqs"] == 4 and s["prefill_tokens"] == 0 for s in steps)
    assert all(s["kv_tokens"] >= s["prefill_tokens"] + s["decode_seqs"] for s in steps)
    assert result["compiled_decode_steps"] == result["cuda_graph_replays"] == 0  # eager


@pytest.mark.slow
def test_quick_bench_reports_the_compiled_decode_steps(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    args = ["bench", "engine", "--model", str(tiny_folder), "--quick", "--skip-baseline"]
    assert main([*args, "--device", "cpu", "--compile", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    # Every decode-only step the sections record ran compiled (and the unrecorded ones too).
    decode_steps = sum(1 for s in result["steps"] if s["decode_seqs"] and not s["prefill_tokens"])
    assert result["compiled_decode_steps"] >= decode_steps > 0
    assert result["cuda_graph_replays"] == 0  # CPU: no graphs
    with pytest.raises(SystemExit, match="--cuda-graphs needs --compile and a CUDA device"):
        main([*args, "--device", "cpu", "--cuda-graphs", "--compile"])


def test_quick_bench_can_skip_the_baseline(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    args = ["bench", "engine", "--model", str(tiny_folder), "--quick", "--skip-baseline"]
    assert main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["throughput"] is None


def test_the_report_says_which_dtype_ran_and_why(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "engine.json"
    args = ["bench", "engine", "--model", str(tiny_folder), "--quick", "--skip-baseline"]
    assert main([*args, "--json", str(out)]) == 0  # --dtype auto
    result = json.loads(out.read_text())
    assert result["dtype"] == str(resolve_dtype("auto")).removeprefix("torch.")
    assert result["dtype_reason"] == dtype_reason("auto") and result["dtype_reason"].startswith(
        "auto: CPU"
    )
    assert result["dtype_reason"] in " ".join(capsys.readouterr().out.split())

    assert main([*args, "--dtype", "float32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["dtype"], result["dtype_reason"]) == ("float32", "configured")


def test_quick_bench_with_int8_weights_measures_quality(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    args = ["bench", "engine", "--model", str(tiny_folder), "--quick", "--skip-baseline"]
    args += ["--dtype", "float32", "--quantization", "int8", "--quality", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["quantization"] == "int8"
    assert result["single_stream"]["weight_gb_s"] > 0
    q = result["quality"]
    assert q["prompts"] == 20 and q["tokens"] == 20 * 32 and q["text_tokens"] > 300
    assert 0 <= q["free_running_agreement"] <= 1
    # int8 weights barely move a float32 model: nearly every reference token stays first.
    assert q["teacher_forced_agreement"] >= 0.9
    assert q["perplexity_ratio"] == q["perplexity"] / q["reference_perplexity"]
    assert abs(q["perplexity_ratio"] - 1) < 0.02


@pytest.fixture(scope="module")
def tiny_gqa_folder(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A tiny random Llama with 2 KV heads and 2 layers (so 2 ranks or 2 stages can split it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-gqa")
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("split", [["-tp", "2"], ["-pp", "2"]], ids=["tp2", "pp2"])
def test_quick_bench_runs_over_two_ranks(
    split: list[str], tiny_gqa_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "engine.json"
    argv = ["bench", "engine", "--model", str(tiny_gqa_folder), "--quick", "--skip-baseline"]
    assert main([*argv, "--dtype", "float32", *split, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["batched_decode"]["tok_s"] > 0 and result["single_stream"]["tok_s"] > 0
