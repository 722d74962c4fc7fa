"""Helpers for tests of the managed llama.cpp server: a stand-in binary, a small GGUF file."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

FAKE = Path(__file__).with_name("fake_llama_server.py")


def executable(path: Path, script: str) -> Path:
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_llama_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable ``llama-server`` in ``tmp_path`` that runs :mod:`fake_llama_server`; its starts
    are logged to ``tmp_path / "argv.jsonl"`` (read them with :func:`starts`)."""
    monkeypatch.setenv("FAKE_LLAMA_ARGV", str(tmp_path / "argv.jsonl"))
    return executable(tmp_path / "llama-server", f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')


def write_gguf(path: Path, tied: bool) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))  # 128 bytes
    if not tied:
        writer.add_tensor("output.weight", np.zeros((4, 8), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float16))  # 128 bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def starts(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "argv.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]
