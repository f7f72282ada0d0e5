"""Multirun tables: a real ``train.py -m`` over three explainers gives one table with three
rows in the sweep directory; seeds of one setting merge into one row with a t-interval;
ranks follow each column's direction; a job without a summary is reported, not fatal."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DIGITS

from xaibench.eval.sweep import aggregate_sweep


def test_three_explainer_multirun_writes_one_table(tmp_path, shared_cache):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", *TINY_DIGITS,
        "dataset.n_test=12", "metric=[paper]", "metric.paper.step=0.1",
        "metric.paper.percent_step=0.1", "trainer.enable_progress_bar=false",
        f"paths.cache_dir={shared_cache}", f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep}", "explainer=gradcam,gradcampp,layercam",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = (sweep / "table.md").read_text().splitlines()
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| gradcam", "| gradcampp", "| layercam"]
    assert lines[0].startswith("| method | msi |")
    with open(sweep / "per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and {r["method"] for r in rows} == {"gradcam", "gradcampp", "layercam"}
    record = json.loads((sweep / "sweep.json").read_text())
    assert [j["job"] for j in record["jobs"]] == ["0", "1", "2"] and record["missing"] == []
    assert all(j["timing"][m]["images_per_s"] > 0 for j in record["jobs"] for m in j["timing"])


def fake_job(sweep: Path, num: int, overrides: list[str], seed: int, test: dict) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "summary.json").write_text(json.dumps({"seed": seed, "test": test}))


def stats(mean: float, higher: bool | None = True) -> dict:
    return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 10, "n_nan": 0,
            "entry": "paper", "higher_is_better": higher}  # fmt: skip


def test_seeds_merge_into_one_row_with_a_t_interval(tmp_path):
    means = {"lax": [0.5, 0.3, 0.1], "gradcam": [0.2, 0.2, 0.2]}
    for s in range(3):
        test = {m: {"msi": stats(v[s]), "deletion": stats(-v[s], False)} for m, v in means.items()}
        fake_job(tmp_path, s, ["explainer=lax", "compare_with=[gradcam]", f"seed={s}"], s, test)
    (tmp_path / "3" / ".hydra").mkdir(parents=True)  # a job that died before its summary
    record = aggregate_sweep(tmp_path)
    assert record["missing"] == ["3"]
    with open(tmp_path / "table.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert set(table) == {"lax (3 seeds)", "gradcam (3 seeds)"}
    lax = table["lax (3 seeds)"]
    # mean 0.3, sd 0.2, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.2 / sqrt(3) = 0.4968
    assert float(lax["msi"]) == pytest.approx(0.3)
    assert float(lax["msi_ci_high"]) - 0.3 == pytest.approx(4.302653 * 0.2 / math.sqrt(3), 1e-4)
    assert float(table["gradcam (3 seeds)"]["msi_ci_low"]) == pytest.approx(0.2)
    jobs = (tmp_path / "table_jobs.md").read_text()
    assert "| lax (seed 2) |" in jobs and jobs.count("\n") == 2 + 6
    ranks = (tmp_path / "ranks.md").read_text().splitlines()
    # lax: msi 0.3 > 0.2 (rank 1) and deletion -0.3 < -0.2, lower is better (rank 1)
    assert ranks[2].startswith("| lax (3 seeds) | 1.00")


def test_setting_labels_keep_rows_apart(tmp_path):
    for i, lam in enumerate((1, 5)):
        fake_job(
            tmp_path, i, ["explainer=lax", f"explainer.lam={lam}"], 0, {"lax": {"msi": stats(i)}}
        )
    aggregate_sweep(tmp_path)
    names = [ln.split(" | ")[0] for ln in (tmp_path / "table.md").read_text().splitlines()[2:]]
    assert names == ["| lax [explainer.lam=1]", "| lax [explainer.lam=5]"]


def test_submitit_local_launcher_sweep_gets_its_table(tmp_path, shared_cache):
    """The cluster path on one machine: hydra/launcher=local (submitit) runs each job as its
    own process; the table is still written when the sweep ends."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local", *TINY_DIGITS,
        "dataset.n_test=8", "metric=[msi]", "metric.msi.step=0.1",
        "trainer.enable_progress_bar=false", f"paths.cache_dir={shared_cache}",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}",
        "explainer=gradcam,saliency",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (sweep / ".submitit").is_dir()
    lines = (sweep / "table.md").read_text().splitlines()
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| gradcam", "| saliency"]


def test_slurm_launcher_config_follows_the_trainer(cfg_factory):
    """The README's cluster command composes (no SLURM here): one task and one GPU per
    trainer device, so Lightning's DDP runs inside each job."""
    cfg = cfg_factory(
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
         "trainer.devices=4", "experiment=benchmark_all"]
    )  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 1)
    assert "explainer" in cfg.hydra.sweeper.params
