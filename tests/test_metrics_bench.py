"""`scripts/bench.py --quick` writes bench.json/bench.md with every metric row; bench_gpu.sh fails clearly without CUDA."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
BENCH = ROOT / "scripts" / "bench.py"
METRICS = [
    "msi", "paper columns", "pixel flipping", "region perturbation",
    "faithfulness correlation", "infidelity", "irof", "road",
]  # fmt: skip


def test_bench_quick(capsys, monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("xaibench_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--no-quantus", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "bench.json").read_text())
    ours = {r["metric"]: r for r in result["metrics"] if r["impl"] == "xaibench"}
    assert list(ours) == METRICS
    for r in ours.values():
        assert r["rows"] >= r["n"] and r["img_s"] > 0 and r["ratio"] > 0
    assert ours["road"]["rows"] == 2 * (1 + 2 * 9) + 1  # N·(1 + 2K) at 9 percentiles + 1 check row
    captum = [r for r in result["metrics"] if r["impl"] == "captum" and "img_s" in r]
    assert [r["metric"] for r in captum] == ["infidelity"]
    assert captum[0]["rows"] == 2 * 10 + 2  # 10 perturbations per image + the clean pass
    assert all(r["flipped"] == 0 for r in result["fast_forward"])
    table = (tmp_path / "bench.md").read_text()
    assert table in capsys.readouterr().out
    assert all(f"| {m} | xaibench |" in table for m in METRICS)


def test_bench_gpu_script_fails_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bench_gpu.sh")], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr
