"""The LAX paper's Tables 3-5 as experiments: each composes with the paper's six methods,
columns and settings, its reference holds the paper's numbers, ``paper_comparison.*``
puts ours beside them with Kendall τ, and each ``scripts/reproduce_table*.sh`` runs it."""

from __future__ import annotations

import csv
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_DIGITS
from fixtures import make_mnist
from omegaconf import OmegaConf
from scipy import stats

from xaibench import pipeline
from xaibench.build import build_metrics, explainer_configs
from xaibench.errors import USER_ERRORS, ConfigError
from xaibench.eval.callback import column_names
from xaibench.eval.reference import check_paper_reference, write_paper_comparison
from xaibench.metrics.registry import entry_spec

METHODS = ["lax", "kpcacam", "gradcam", "gradcampp", "layercam", "finercam"]
# the paper's column order (Tables 3-5), in our column names
COLUMNS = [
    "insertion_value",
    "deletion_value",
    "insertion_percent",
    "deletion_percent",
    "fid_minus_value",
    "fid_plus_value",
    "fid_minus_percent",
    "fid_plus_percent",
    "base_score",
    "mask_penalty",
    "msi",
]
# experiment → (dataset, alpha_min, Table 6's lr / lambda / temperature, script)
TABLES = {
    "table3_synthetic_mnist": ("synthetic_mnist", 0.5, (0.001, 5.0, 0.5), "reproduce_table3.sh"),
    "table4_cub200": ("cub200", 0.5, (0.0001, 5.0, 0.5), "reproduce_table4.sh"),
    "table5_cifar10": ("cifar10", 0.4, (0.001, 2.0, 0.5), "reproduce_table5.sh"),
}
PAPER = ROOT.parent / "shared" / "papers" / "lax-msi-learning-quantifiable-visual-explanations.md"
PAPER_NAMES = {
    "Grad- CAM": "gradcam",
    "Grad- CAM++": "gradcampp",
    "Layer- CAM": "layercam",
    "KPCA- CAM": "kpcacam",
    "Finer- CAM": "finercam",
    "LAX": "lax",
}


def run_columns(cfg) -> set[str]:
    """The per-sample columns the run's metric entries produce (as the callback names them)."""
    keys = {entry: entry_spec(fn).keys for entry, fn in build_metrics(cfg).items()}
    return {c for names in column_names(keys).values() for c in names.values()}


@pytest.mark.parametrize("name", list(TABLES))
def test_table_experiment_composes_with_the_papers_setting(cfg_factory, name):
    dataset, alpha_min, (lr, lam, temperature), _ = TABLES[name]
    cfg = cfg_factory([f"experiment={name}"])
    assert cfg.dataset.name == dataset
    assert list(explainer_configs(cfg)) == METHODS
    # the paper's GPU-sized settings: 500 + 500 epochs, grids of 0.02, alpha_min, Table 6
    lax = explainer_configs(cfg)["lax"]  # with explainer_settings.lax merged in
    assert (cfg.model.max_epochs, lax.max_epochs) == (500, 500)
    assert cfg.model.net.width == 1.0
    assert (cfg.metric.paper.step, cfg.metric.paper.percent_step) == (0.02, 0.02)
    assert cfg.metric.paper.alpha_min == lax.alpha_min == alpha_min
    assert (lax.optimizer.lr, lax.lam, lax.temperature) == (lr, lam, temperature)
    ref = OmegaConf.to_container(cfg.paper_reference, resolve=True)
    assert set(ref) == {"source", "columns"} and f"dataset={dataset}" in ref["source"]
    assert list(ref["columns"]) == COLUMNS
    assert all(sorted(v) == sorted(METHODS) for v in ref["columns"].values())
    assert set(COLUMNS) <= run_columns(cfg)
    check_paper_reference(cfg.paper_reference, build_metrics(cfg), METHODS)


@pytest.mark.parametrize("name", list(TABLES))
def test_missing_dataset_fails_before_any_training(cfg_factory, tmp_path, name):
    cfg = cfg_factory([f"experiment={name}", f"paths.data_dir={tmp_path / 'empty'}"])
    with pytest.raises(USER_ERRORS, match="(?s)not found.*never downloads") as err:
        pipeline.train(cfg)
    assert str(tmp_path / "empty") in str(err.value)  # names where it looked
    assert not any((tmp_path / "cache").rglob("*.pt"))  # nothing trained


def test_another_main_explainer_keeps_the_table(cfg_factory):
    """LAX's paper settings are per-method settings: with explainer=gradcam the run still
    builds, LAX is no row, and the other five keep their configs."""
    cfg = cfg_factory(["experiment=table3_synthetic_mnist", "explainer=gradcam"])
    assert list(explainer_configs(cfg)) == [
        "gradcam",
        "kpcacam",
        "gradcampp",
        "layercam",
        "finercam",
    ]
    assert "max_epochs" not in explainer_configs(cfg)["gradcam"]


def test_table3_reference_is_the_papers_msi(cfg_factory):
    cfg = cfg_factory(["experiment=table3_synthetic_mnist"])
    msi = OmegaConf.to_container(cfg.paper_reference.columns.msi)
    assert msi == {
        "lax": 0.582,
        "kpcacam": 0.128,
        "gradcam": 0.091,
        "gradcampp": 0.085,
        "layercam": 0.084,
        "finercam": -0.027,
    }


def paper_tables() -> list[tuple[float, dict[str, list[float]]]]:
    """The three method tables of the paper text, in order: (alpha_min of the Base Score
    header, method → its eleven numbers)."""
    lines = PAPER.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("Method\tInsertion (Pixel Value)"):
            alpha = float(re.search(r"alpha_\{\\min\} = ([0-9.]+)", line).group(1))
            rows = [r.split("\t") for r in lines[i + 1 : i + 7]]
            out.append((alpha, {PAPER_NAMES[r[0]]: [float(x) for x in r[1:]] for r in rows}))
    return out


@pytest.mark.skipif(not PAPER.exists(), reason="the paper's text (shared/papers) is not here")
def test_every_reference_value_is_the_papers():
    """Against the paper text itself. Its captions of Tables 4-5 stand below their tables;
    the Base Score headers' alpha_min (CUB 0.5, CIFAR-10 0.4, as Table 2's caption says)
    confirm which table is which."""
    tables = paper_tables()
    assert len(tables) == 3
    for name, (alpha, numbers) in zip(TABLES, tables, strict=True):
        assert alpha == TABLES[name][1]
        ref = yaml.safe_load((ROOT / "configs" / "paper_reference" / f"{name}.yaml").read_text())
        for j, column in enumerate(COLUMNS):
            assert ref["columns"][column] == {m: numbers[m][j] for m in METHODS}, (name, column)


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def summary(mean: float, half: float = 0.05) -> dict[str, float]:
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": 10, "n_nan": 0}


def test_write_paper_comparison_tau_and_files(tmp_path):
    ours = {"a": 0.6, "b": 0.3, "c": 0.1, "d": -0.2}
    results = {m: {"msi": summary(v), "base_score": summary(v + 1)} for m, v in ours.items()}
    results["extra"] = {"msi": summary(0.9)}  # not in the paper: left out of the comparison
    reference = {
        "source": "Paper X, Table 9",
        "columns": {
            "msi": {"a": 0.5, "b": 0.2, "c": 0.0, "d": -0.1},  # same order
            "base_score": {"a": -1.0, "b": 0.0, "c": 1.0, "d": 2.0},  # reversed
        },
    }
    taus = write_paper_comparison(tmp_path, results, reference)
    assert taus["msi"] == {"kendall": pytest.approx(1.0), "n": 4}
    assert taus["base_score"] == {"kendall": pytest.approx(-1.0), "n": 4}
    md = (tmp_path / "paper_comparison.md").read_text().splitlines()
    assert md[0] == "Source: Paper X, Table 9"
    assert "| msi | a | 0.600 | 0.050 | 0.500 | 0.100 |" in md
    assert "| base_score | d | 0.800 | 0.050 | 2.000 | -1.200 |" in md
    assert not any("extra" in line for line in md)
    rows = read_csv(tmp_path / "paper_comparison.csv")
    assert [(r["column"], r["method"]) for r in rows[:5]] == [
        ("msi", "a"),
        ("msi", "b"),
        ("msi", "c"),
        ("msi", "d"),
        ("msi", "Kendall τ (ours vs paper)"),
    ]
    assert float(rows[4]["ours"]) == pytest.approx(1.0)
    assert float(rows[9]["ours"]) == pytest.approx(-1.0)
    assert float(rows[1]["paper"]) == 0.2 and float(rows[1]["ours_minus_paper"]) == 0.1
    assert (tmp_path / "paper_comparison.tex").read_text().startswith("\\begin{tabular}")


def test_write_paper_comparison_tau_is_scipys_on_ties(tmp_path):
    ours = [0.3, 0.1, 0.1, 0.7, 0.2]
    paper = [0.2, 0.3, 0.0, 0.9, 0.2]
    results = {f"m{i}": {"msi": summary(v)} for i, v in enumerate(ours)}
    reference = {"columns": {"msi": {f"m{i}": v for i, v in enumerate(paper)}}}
    taus = write_paper_comparison(tmp_path, results, reference)
    assert taus["msi"]["kendall"] == pytest.approx(stats.kendalltau(ours, paper).statistic)
    one = write_paper_comparison(tmp_path, {"m0": results["m0"]}, reference)
    assert math.isnan(one["msi"]["kendall"]) and one["msi"]["n"] == 1


def test_a_bad_reference_fails_before_training(cfg_factory):
    cfg = cfg_factory(["experiment=table3_synthetic_mnist"])
    metrics = build_metrics(cfg)
    with pytest.raises(ConfigError, match="'insertion'.*not a column"):
        check_paper_reference({"columns": {"insertion": {"lax": 0.9}}}, metrics, METHODS)
    with pytest.raises(ConfigError, match="names none of this run's methods"):
        check_paper_reference({"columns": {"msi": {"LAX": 0.5}}}, metrics, METHODS)
    with pytest.raises(ConfigError, match="columns is empty"):
        check_paper_reference({"source": "x"}, metrics, METHODS)


def script_cpu_args(script: Path) -> list[str]:
    """The overrides in a reproduce script's ``CPU=( ... )`` block."""
    block = re.search(r"^CPU=\((.*?)^\)", script.read_text(), re.S | re.M)
    assert block, f"{script} has no CPU=( ... ) block"
    return block.group(1).split()


@pytest.mark.parametrize("name", list(TABLES))
def test_reproduce_script(cfg_factory, name):
    script = ROOT / "scripts" / TABLES[name][3]
    assert script.is_file() and script.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert f"experiment={name}" in text and "set -euo pipefail" in text and '"$@"' in text
    # the documented CPU-sized overrides compose, and the experiment file documents them
    cpu = script_cpu_args(script)
    doc = (ROOT / "configs" / "experiment" / f"{name}.yaml").read_text()
    assert all(arg in doc for arg in cpu), "the YAML's CPU comment and the script disagree"
    cfg = cfg_factory([f"experiment={name}", *cpu])
    assert cfg.trainer.accelerator == "cpu" and cfg.model.max_epochs <= 10
    assert explainer_configs(cfg)["lax"].max_epochs <= 10
    assert cfg.metric.paper.step > 0.02
    assert set(COLUMNS) <= run_columns(cfg)
    # the script itself: --cpu and extra arguments reach train.py (--cfg job only prints)
    out = subprocess.run(
        ["bash", str(script), "--cpu", "seed=7", "--cfg", "job"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    job = yaml.safe_load(out)
    assert job["seed"] == 7 and job["trainer"]["accelerator"] == "cpu"
    assert job["metric"]["paper"]["step"] == cfg.metric.paper.step
    assert job["compare_with"] == METHODS[1:]
    assert job["explainer_settings"]["lax"]["max_epochs"] <= 10


def test_table3_end_to_end_tiny(cfg_factory, tmp_path, shared_cache, one_thread):
    """The Table 3 experiment itself (synthetic_mnist over tiny IDX files, six methods)
    writes paper_comparison.* whose 'ours' are the run's means and whose τ is scipy's."""
    data = make_mnist(tmp_path / "data", n_train=96, n_test=40)
    cfg = cfg_factory(
        [
            "experiment=table3_synthetic_mnist",
            f"paths.data_dir={data}",
            *TINY_DIGITS,
            "dataset.n_test=8",
            "dataset.eval_batch_size=8",
            "explainer.max_epochs=1",
            "explainer.val_samples=8",
            "metric.paper.step=0.1",
            "metric.paper.percent_step=0.1",
        ],
        cache_dir=shared_cache,
    )
    result = pipeline.train(cfg)
    out = Path(cfg.paths.output_dir)
    md = (out / "paper_comparison.md").read_text()
    assert md.startswith("Source: LAX paper, Table 3 (Synthetic MNIST, alpha_min 0.5); ours: ")
    assert "dataset=synthetic_mnist, seed 0" in md.splitlines()[0]
    rows = read_csv(out / "paper_comparison.csv")
    assert len(rows) == len(COLUMNS) * (len(METHODS) + 1)
    msi = {r["method"]: r for r in rows if r["column"] == "msi"}
    assert set(msi) == {*METHODS, "Kendall τ (ours vs paper)"}
    ref = cfg.paper_reference.columns.msi
    ours = [result["test"][m]["msi"]["mean"] for m in METHODS]
    for m, v in zip(METHODS, ours, strict=True):
        assert float(msi[m]["ours"]) == pytest.approx(v, abs=1e-5)
        assert float(msi[m]["paper"]) == ref[m]
    tau = stats.kendalltau(ours, [ref[m] for m in METHODS]).statistic
    assert result["paper_comparison"]["msi"] == {"kendall": pytest.approx(tau), "n": 6}
