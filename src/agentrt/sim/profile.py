"""Engine profiles: the cost and capacity model of one simulated engine.

A profile is data (a TOML file under ``sim/profiles/`` or any path), loaded
into :class:`EngineProfile`. The step-time model is linear in four terms,
the same four the embedded engine's benchmark records per step, so a profile
can be fitted from measurements (``agentrt sim fit``)::

    step_seconds = step_overhead_s
                 + prefill_token_s * prefill_tokens   # new prompt tokens computed
                 + decode_seq_s    * decode_seqs      # sequences emitting a token
                 + kv_token_s      * kv_tokens        # KV tokens attended over, all sequences
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

PROFILE_DIR = "profiles"


class EngineProfile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Costs (seconds) and capacities (blocks, tokens, sequences) of one engine."""

    name: str
    description: str = ""
    step_overhead_s: float
    prefill_token_s: float
    decode_seq_s: float
    kv_token_s: float
    block_size: int = 16
    kv_blocks: int
    max_batch_size: int = 256
    max_batch_tokens: int = 8192  # per-step token budget (chunked prefill)
    max_model_len: int = 8192
    prefix_caching: bool = True
    swap_block_s: float = 0.0  # one block, one direction, in a batched copy
    swap_overhead_s: float = 0.0  # fixed cost of one batched swap
    host_blocks: int = 0  # pinned host pool for swapped-out KV
    # What the profiled engine computes on (cpu, cuda): the scheduler's service unit "auto"
    # resolves for it as it does on that engine (SchedulerConfig.on_device).
    device: str = "cuda"

    def __post_init__(self) -> None:
        for field in (
            "step_overhead_s",
            "prefill_token_s",
            "decode_seq_s",
            "kv_token_s",
            "swap_block_s",
            "swap_overhead_s",
        ):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0")
        if self.block_size < 1 or self.kv_blocks < 1 or self.max_batch_size < 1:
            raise ValueError("block_size, kv_blocks and max_batch_size must be >= 1")
        if self.max_batch_tokens <= self.max_batch_size:
            raise ValueError("max_batch_tokens must exceed max_batch_size (one decode token each)")
        if self.host_blocks < 0:
            raise ValueError("host_blocks must be >= 0")

    def step_time(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        return (
            self.step_overhead_s
            + self.prefill_token_s * prefill_tokens
            + self.decode_seq_s * decode_seqs
            + self.kv_token_s * kv_tokens
        )

    @property
    def kv_capacity_tokens(self) -> int:
        return self.kv_blocks * self.block_size

    @property
    def prefill_budget(self) -> int:
        """Prefill tokens per step: the token budget less one decode token per batch slot,
        so that running decodes always fit next to a prefill chunk."""
        return self.max_batch_tokens - self.max_batch_size


def shipped_profiles() -> list[str]:
    folder = resources.files(__package__).joinpath(PROFILE_DIR)
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_profile(name_or_path: str | Path) -> EngineProfile:
    """A shipped profile by name (``a100-llama3-8b``) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        data = path.read_bytes()
    else:
        resource = resources.files(__package__).joinpath(PROFILE_DIR, f"{name_or_path}.toml")
        if not resource.is_file():
            raise ValueError(
                f"unknown engine profile {str(name_or_path)!r}; shipped: {', '.join(shipped_profiles())}"
            )
        data = resource.read_bytes()
    try:
        return msgspec.convert(tomllib.loads(data.decode()), EngineProfile)
    except (msgspec.ValidationError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"invalid engine profile {str(name_or_path)!r}: {e}") from e


def with_settings(profile: EngineProfile, settings: dict[str, Any]) -> EngineProfile:
    """``profile`` with some fields replaced (``agentrt sim --set``), validated like a file;
    its name records the change, so reports say which engine they describe."""
    if not settings:
        return profile
    unknown = set(settings) - set(EngineProfile.__struct_fields__) - {"name", "description"}
    if unknown:
        raise ValueError(f"not an engine profile field: {', '.join(sorted(unknown))}")
    changes = ", ".join(f"{k}={v}" for k, v in settings.items())
    data = {**msgspec.to_builtins(profile), "name": f"{profile.name} ({changes})", **settings}
    try:
        return msgspec.convert(data, EngineProfile)
    except msgspec.ValidationError as e:
        raise ValueError(f"invalid profile setting ({changes}): {e}") from e


def dump_profile(profile: EngineProfile, header: str = "") -> str:
    """TOML text of a profile, preceded by ``header`` as comment lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for field in profile.__struct_fields__:
        value = getattr(profile, field)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = msgspec.json.encode(value).decode()
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        lines.append(f"{field} = {text}")
    return "\n".join(lines) + "\n"
