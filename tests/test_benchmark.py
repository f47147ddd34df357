"""scripts/benchmark.py runs end to end on a tiny universe and its JSON line carries the contract
keys (issue #6). Figures are never asserted: performance claims come from the script itself."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("workers", ["1", "2"])
def test_benchmark_json_line_parses_with_the_contract_keys(database_url, capsys, workers):
    benchmark = load_benchmark()
    assert benchmark.main(["--portfolios", "3", "--positions", "8", "--symbols", "30",
                           "--database-url", database_url, "--workers", workers, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"portfolios", "positions", "symbols", "database", "wall_seconds", "stage_seconds", "floor_seconds",
            "ratio_to_floor", "positions_per_second", "peak_rss_mb"} <= set(report)
    assert report["portfolios"] == 3 and report["positions"] == 24 and report["symbols"] == 30
    assert report["database"] == database_url.split(":")[0].split("+")[0]
    assert report["ratio_to_floor"] == pytest.approx(report["wall_seconds"] / report["floor_seconds"], rel=0.01)
    assert report["result_rows"] > 0 and report["stage_seconds"]["jobs"]["snapshot"] >= 0
    assert report["workers"] == int(workers) and report["executor"] == ("serial" if workers == "1" else "processes")
