"""Where derived data (token tables, tokenizer files) is cached between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$AGENTRT_CACHE_DIR`` or ``~/.cache/agentrt``, created on first use."""
    root = os.environ.get("AGENTRT_CACHE_DIR")
    path = Path(root) if root else Path.home() / ".cache" / "agentrt"
    path.mkdir(parents=True, exist_ok=True)
    return path
