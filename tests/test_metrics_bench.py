"""`scripts/bench.py --quick` runs and prints its ratios and the forward passes saved."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "scripts" / "bench.py"


def test_bench_quick(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("xaibench_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--no-quantus", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "shared across metrics -> saves" in out
    assert out.count("engine/own-forward") == 2
    assert "peak memory" in out
