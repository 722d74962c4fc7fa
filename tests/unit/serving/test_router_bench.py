"""``agentrt bench router`` runs end to end and writes the table's figures as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from agentrt.cli import main


def test_the_router_benchmark_times_every_layer_against_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "router.json"
    assert (
        main(
            [
                "--log-level",
                "warning",
                "bench",
                "router",
                "--calls",
                "4",
                "--warmup",
                "1",
                "--tokens",
                "3",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    layers = {row["layer"]: row for row in result["layers"]}
    assert list(layers) == ["engine", "router", "router+worker", "http", "http+router"]
    assert all(row["calls"] == 4 and 0 < row["p50_ms"] <= row["p99_ms"] for row in layers.values())
    assert layers["engine"]["ratio_p50"] == 1.0
    assert layers["engine"]["overhead_p50_ms"] == 0.0
