"""One way to configure a component: a ``msgspec.Struct`` loadable from TOML and CLI flags.

Each component (scheduler, engine, server, simulator) declares one config
Struct with defaults. :func:`load_config` builds it from, in increasing
precedence: the defaults, a TOML table, then explicit overrides (CLI flags
that the user actually set). Unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message says which."""


def load_config(
    cls: type[T],
    toml_path: str | Path | None = None,
    table: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults, an optional TOML file (or one of its tables), and overrides.

    ``overrides`` entries whose value is ``None`` are skipped, so an argparse
    namespace with unset flags can be passed as ``vars(args)`` filtered to the
    struct's fields.
    """
    data: dict[str, Any] = {}
    if toml_path is not None:
        with open(toml_path, "rb") as f:
            doc = tomllib.load(f)
        if table is not None:
            doc = doc.get(table, {})
        data.update(doc)
    fields = set(cls.__struct_fields__)
    for key, value in (overrides or {}).items():
        if value is not None and key in fields:
            data[key] = value
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid {cls.__name__}: {e}") from e
